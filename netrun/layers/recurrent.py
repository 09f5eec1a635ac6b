"""Recurrent layers: RNN, LSTM and the LSTMUnit step.

Caffe builds RNN and LSTM by unrolling an internal net over the T time steps;
here the same computation runs directly, one matrix product per step for the
recurrence and one for all steps of the input transform.  Parameter blobs, their
order, shapes and fillers are Caffe's, so weights load both ways.

Shapes: x (T, N, ...) with I = prod(x.shape[2:]) features, cont (T, N), optional
static input x_static (N, ...) with I_s = prod(x_static.shape[1:]), H = num_output.
Bottom order: x, cont, [x_static], [h0, (c0)] -- the last only with
``recurrent_param.expose_hidden``, which also adds tops hT (and cT) of shape
(1, N, H).  ``cont_t`` is the sequence-continuation indicator: the state carried
into step t is multiplied by it, so 0 starts a new sequence.

Caffe conventions kept:

* Without expose_hidden the final state of one forward pass is the initial state
  of the next (zeros at first; reset to zeros when N changes).  With it, h0/c0
  come from the bottoms.
* Backward does not cross forward passes: the gradient reaching h0/c0 is dropped
  (their bottom diffs are written as zeros) and the diffs of the tops hT/cT are
  ignored, as Caffe's unrolled net never connects them.
* Parameter gradients are accumulated (+=) over the steps and into the blobs.
* No gradient is ever sent to cont (Caffe refuses: "Cannot backpropagate to
  sequence indicators").
* ``recurrent_param.debug_info`` is accepted and changes nothing (Caffe only logs
  its internal net with it).
"""
import numpy as np

from ..errors import LayerError, check
from .base import Layer, register


def _sigmoid(x):
    # 1 / (1 + exp(-x)) without overflow warnings for large |x|
    return 0.5 * np.tanh(0.5 * x) + 0.5


def _cont(cont_t, dtype):
    return cont_t.astype(dtype, copy=False)[:, None]


# -- the LSTM step (Caffe's LSTMUnit) --------------------------------------------------------
def lstm_unit_forward(c_prev, gates, cont):
    """One LSTM step for (N, H) c_prev, (N, 4H) gate inputs [i, f, o, g], (N,) cont.

    i = sigmoid(x_i), f = cont * sigmoid(x_f) (exactly 0 where cont == 0),
    o = sigmoid(x_o), g = tanh(x_g);  c = f c_prev + i g;  h = o tanh(c).
    Returns c, h and the activations (i, f, o, g, tanh_c) for the backward step.
    """
    H = c_prev.shape[1]
    i = _sigmoid(gates[:, :H])
    f = _sigmoid(gates[:, H:2 * H])
    cc = _cont(cont, gates.dtype)
    f = np.where(cc == 0, gates.dtype.type(0), cc * f)
    o = _sigmoid(gates[:, 2 * H:3 * H])
    g = np.tanh(gates[:, 3 * H:])
    c = f * c_prev + i * g
    tanh_c = np.tanh(c)
    h = o * tanh_c
    return c, h, (i, f, o, g, tanh_c)


def lstm_unit_backward(c_prev, acts, dc, dh):
    """Caffe's LSTMUnit gradient (its f (1 - f) term uses f = cont * sigmoid, as Caffe does).

    dc_term = dc + dh o (1 - tanh(c)^2);   dc_prev = dc_term f
    dx_i = dc_term g i (1 - i);  dx_f = dc_term c_prev f (1 - f)
    dx_o = dh tanh(c) o (1 - o); dx_g = dc_term i (1 - g^2)
    """
    i, f, o, g, tanh_c = acts
    one = i.dtype.type(1)
    dct = dc + dh * o * (one - tanh_c * tanh_c)
    dgates = np.concatenate([dct * g * i * (one - i),
                             dct * c_prev * f * (one - f),
                             dh * tanh_c * o * (one - o),
                             dct * i * (one - g * g)], axis=1)
    return dct * f, dgates


@register("LSTMUnit")
class LSTMUnit(Layer):
    """One LSTM time step: bottoms c_prev (1, N, H), gate inputs x (1, N, 4H) in the
    order [i, f, o, g], cont (1, N); tops c (1, N, H), h (1, N, H).

    i = sigmoid(x_i), f = cont * sigmoid(x_f), o = sigmoid(x_o), g = tanh(x_g)
    c = f * c_prev + i * g;   h = o * tanh(c)
    dc_term = dE/dc + dE/dh * o * (1 - tanh(c)^2);   dE/dc_prev = dc_term * f
    dE/dx_i = dc_term g i(1-i);  dE/dx_f = dc_term c_prev f(1-f);
    dE/dx_o = dE/dh tanh(c) o(1-o);  dE/dx_g = dc_term i (1-g^2).  No gradient to cont.
    """
    in_place_ok = False
    exact_bottoms = 3
    exact_tops = 2

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def reshape(self, bottom, top):
        c_prev, x, cont = bottom
        n = c_prev.shape[1] if c_prev.num_axes > 1 else None
        for k, (b, axes, what) in enumerate(((c_prev, 3, "c_prev"), (x, 3, "gate input"),
                                            (cont, 2, "cont"))):
            if b.num_axes != axes or b.shape[0] != 1 or b.shape[1] != n:
                want = "(1, N, H)" if k == 0 else "(1, N, 4H)" if k == 1 else "(1, N)"
                raise LayerError(f"{what} must be {want} with N = {n}; got {b.shape} "
                                 f"(c_prev {c_prev.shape})")
        self.H = c_prev.shape[2]
        if x.shape[2] != 4 * self.H:
            raise LayerError(f"gate input has {x.shape[2]} channels; 4 x {self.H} expected "
                             f"(c_prev {c_prev.shape}, gate input {x.shape})")
        top[0].reshape_like(c_prev)
        top[1].reshape_like(c_prev)

    def forward(self, bottom, top):
        c_prev = bottom[0].data[0]
        c, h, self.acts = lstm_unit_forward(c_prev, bottom[1].data[0], bottom[2].data[0])
        top[0].data[0] = c
        top[1].data[0] = h

    def backward(self, top, propagate_down, bottom):
        if propagate_down[2]:
            raise LayerError("LSTMUnit cannot backpropagate to sequence indicators (cont)")
        if not (propagate_down[0] or propagate_down[1]):
            return
        dc_prev, dgates = lstm_unit_backward(bottom[0].data[0], self.acts,
                                             top[0].diff[0], top[1].diff[0])
        if propagate_down[0]:
            bottom[0].diff[0] = dc_prev
        if propagate_down[1]:
            bottom[1].diff[0] = dgates


class _Recurrent(Layer):
    """Shared plumbing of RNN and LSTM (Caffe's RecurrentLayer)."""
    in_place_ok = False
    n_state = 1        # recurrent blobs: h (RNN) or h, c (LSTM)
    gate_mult = 1      # rows of the input weights per hidden unit

    def __init__(self, param, ctx):
        super().__init__(param, ctx)
        rp = param.recurrent_param
        self.expose = bool(rp.expose_hidden)
        exposed = self.n_state if self.expose else 0
        self.min_bottoms = 2 + exposed
        self.max_bottoms = 3 + exposed
        self.exact_tops = 1 + exposed

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    # -- setup ---------------------------------------------------------------------------
    def setup(self, bottom, top):
        rp = self.param.recurrent_param
        self.H = int(rp.num_output)
        check(self.H > 0, "recurrent_param.num_output must be positive")
        x, cont = bottom[0], bottom[1]
        if x.num_axes < 3:
            raise LayerError(f"x must be (T, N, features...) with at least 3 axes, got {x.shape}")
        if cont.num_axes != 2 or cont.shape != x.shape[:2]:
            raise LayerError(f"cont must be (T, N) = {x.shape[:2]}, got {cont.shape}")
        self.T = x.shape[0]
        self.static = len(bottom) > 2 + (self.n_state if self.expose else 0)
        self.I = int(np.prod(x.shape[2:], dtype=np.int64))
        self.I_static = None
        if self.static:
            xs = bottom[2]
            if xs.num_axes < 2 or xs.shape[0] != x.shape[1]:
                raise LayerError(f"static input must be (N, features...) with N = {x.shape[1]}, "
                                 f"got {xs.shape}")
            self.I_static = int(np.prod(xs.shape[1:], dtype=np.int64))
        self.state = None
        self.blobs = self.make_params(rp.weight_filler, rp.bias_filler)

    def reshape(self, bottom, top):
        x, cont = bottom[0], bottom[1]
        if x.num_axes < 3 or x.shape[0] != self.T:
            raise LayerError(f"x must be (T={self.T}, N, features...): the number of time steps "
                             f"cannot change; got {x.shape}")
        if int(np.prod(x.shape[2:], dtype=np.int64)) != self.I:
            raise LayerError(f"x has {int(np.prod(x.shape[2:]))} features per step ({x.shape}); "
                             f"the weights expect {self.I}")
        self.N = x.shape[1]
        if cont.shape != (self.T, self.N):
            raise LayerError(f"cont must be (T, N) = {(self.T, self.N)}, got {cont.shape}")
        off = 2
        if self.static:
            xs = bottom[2]
            n_feat = int(np.prod(xs.shape[1:], dtype=np.int64)) if xs.num_axes > 1 else -1
            if xs.num_axes < 2 or xs.shape[0] != self.N or n_feat != self.I_static:
                raise LayerError(f"static input must be (N={self.N}, ...) with {self.I_static} "
                                 f"features, got {xs.shape}")
            off = 3
        hshape = (1, self.N, self.H)
        if self.expose:
            for j, b in enumerate(bottom[off:]):
                if b.shape != hshape:
                    raise LayerError(f"bottom {off + j} (initial {'hc'[j]}) must have shape "
                                     f"{hshape}, got {b.shape}")
        top[0].reshape((self.T, self.N, self.out_dim))
        for t in top[1:]:
            t.reshape(hshape)

    def initial_state(self, bottom):
        hshape = (1, self.N, self.H)
        if self.expose:
            off = 3 if self.static else 2
            return [b.data[0].copy() for b in bottom[off:off + self.n_state]]
        if self.state is None or self.state[0].shape != hshape[1:]:
            self.state = [np.zeros(hshape[1:], self.dtype) for _ in range(self.n_state)]
        return [s.copy() for s in self.state]

    def finish_forward(self, final, top):
        if self.expose:
            for t, s in zip(top[1:], final):
                t.data[0] = s
        else:
            self.state = [s.copy() for s in final]

    def zero_hidden_diffs(self, propagate_down, bottom):
        if self.expose:
            off = 3 if self.static else 2
            for j in range(off, len(bottom)):
                if propagate_down[j]:
                    bottom[j].diff[...] = 0

    def input_transform(self, bottom, W, b, W_static):
        """W x_t + b for all steps at once, (T, N, R); and W_static x_static, (N, R) or None."""
        x2 = bottom[0].data.reshape(self.T, self.N, self.I)
        gx = x2 @ W.T
        gx += b
        gs = None
        if self.static:
            gs = bottom[2].data.reshape(self.N, self.I_static) @ W_static.T
        return gx, gs

    def input_backward(self, bottom, propagate_down, dgx, W, kW, kb, W_static, kWs):
        """Gradients of the input transform from dE/d(gate input) (T, N, R)."""
        R = dgx.shape[2]
        flat = dgx.reshape(self.T * self.N, R)
        if self.param_propagate_down[kW]:
            self.blobs[kW].diff += flat.T @ bottom[0].data.reshape(self.T * self.N, self.I)
        if self.param_propagate_down[kb]:
            self.blobs[kb].diff += flat.sum(axis=0)
        if propagate_down[0]:
            bottom[0].diff[...] = (flat @ W).reshape(bottom[0].shape)
        if self.static:
            ds = dgx.sum(axis=0)                      # x_static enters every step
            if self.param_propagate_down[kWs]:
                self.blobs[kWs].diff += ds.T @ bottom[2].data.reshape(self.N, self.I_static)
            if propagate_down[2]:
                bottom[2].diff[...] = (ds @ W_static).reshape(bottom[2].shape)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise LayerError(f"{self.type} cannot backpropagate to sequence indicators (cont)")
        self.backward_steps(top, propagate_down, bottom)
        self.zero_hidden_diffs(propagate_down, bottom)


@register("LSTM")
class LSTM(_Recurrent):
    """Long short-term memory over T steps (Caffe's LSTM layer; top h is (T, N, H)).

    Parameters, in Caffe's order: W_xc (4H, I), b_c (4H), [W_xc_static (4H, I_s)],
    W_hc (4H, H) -- gate rows in the order i, f, o, g.
        a_t = W_hc (cont_t h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static]
        i, f, o, g = sigmoid, cont_t * sigmoid, sigmoid, tanh of the four blocks of a_t
        c_t = f c_{t-1} + i g;   h_t = o tanh(c_t)
    Backward runs the LSTMUnit gradient (see lstm_unit_backward) from t = T-1 to 0:
    dE/dh_t = top diff_t + cont_{t+1} W_hc^T da_{t+1};  dE/dc_t from step t+1;
    dW_hc += sum_t da_t^T (cont_t h_{t-1});  dW_xc += da^T x;  db_c += sum da;
    dE/dx = da W_xc;  dW_xc_static += (sum_t da_t)^T x_static.
    """
    n_state = 2

    @property
    def out_dim(self):
        return self.H

    def make_params(self, wf, bf):
        H4 = 4 * self.H
        blobs = [self.new_param((H4, self.I), wf), self.new_param((H4,), bf)]
        if self.static:
            blobs.append(self.new_param((H4, self.I_static), wf))
        blobs.append(self.new_param((H4, self.H), wf))
        return blobs

    def forward(self, bottom, top):
        W, b = self.blobs[0].data, self.blobs[1].data
        Ws = self.blobs[2].data if self.static else None
        Whc = self.blobs[-1].data
        gx, gs = self.input_transform(bottom, W, b, Ws)
        h, c = self.initial_state(bottom)
        cont = bottom[1].data
        T, N, H = self.T, self.N, self.H
        self.hc = np.empty((T, N, H), self.dtype)      # cont_t * h_{t-1}
        self.cprev = np.empty((T, N, H), self.dtype)
        self.acts = []
        out = top[0].data
        for t in range(T):
            self.hc[t] = _cont(cont[t], self.dtype) * h
            a = self.hc[t] @ Whc.T
            a += gx[t]
            if gs is not None:
                a += gs
            self.cprev[t] = c
            c, h, acts = lstm_unit_forward(c, a, cont[t])
            self.acts.append(acts)
            out[t] = h
        self.finish_forward([h, c], top)

    def backward_steps(self, top, propagate_down, bottom):
        Whc = self.blobs[-1].data
        cont = bottom[1].data
        dtop = top[0].diff
        T, N, H = self.T, self.N, self.H
        dgx = np.empty((T, N, 4 * H), self.dtype)
        dh_rec = np.zeros((N, H), self.dtype)
        dc = np.zeros((N, H), self.dtype)
        k_hc = len(self.blobs) - 1
        dWhc = np.zeros_like(Whc) if self.param_propagate_down[k_hc] else None
        for t in range(T - 1, -1, -1):
            dh = dtop[t] + dh_rec
            dc, da = lstm_unit_backward(self.cprev[t], self.acts[t], dc, dh)
            dgx[t] = da
            if dWhc is not None:
                dWhc += da.T @ self.hc[t]
            dh_rec = (da @ Whc) * _cont(cont[t], self.dtype)
        if dWhc is not None:
            self.blobs[k_hc].diff += dWhc
        self.input_backward(bottom, propagate_down, dgx, self.blobs[0].data, 0, 1,
                            self.blobs[2].data if self.static else None, 2)


@register("RNN")
class RNN(_Recurrent):
    """Simple recurrent net over T steps (Caffe's RNN layer; top o is (T, N, H)).

    Parameters, in Caffe's order: W_xh (H, I), b_h (H), [W_xh_static (H, I_s)],
    W_hh (H, H), W_ho (H, H), b_o (H).
        h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static])
        o_t = tanh(W_ho h_t + b_o)
    Backward: dz_t = dE/do_t (1 - o_t^2);  dW_ho += dz^T h;  db_o += sum dz;
    from t = T-1 to 0: dE/dh_t = W_ho^T dz_t + cont_{t+1} W_hh^T da_{t+1},
    da_t = dE/dh_t (1 - h_t^2);  dW_hh += da_t^T (cont_t h_{t-1});  then the input
    transform as for LSTM.
    """
    n_state = 1

    @property
    def out_dim(self):
        return self.H

    def make_params(self, wf, bf):
        H = self.H
        blobs = [self.new_param((H, self.I), wf), self.new_param((H,), bf)]
        if self.static:
            blobs.append(self.new_param((H, self.I_static), wf))
        blobs += [self.new_param((H, H), wf), self.new_param((H, H), wf),
                  self.new_param((H,), bf)]
        return blobs

    def forward(self, bottom, top):
        k = 3 if self.static else 2
        W, b = self.blobs[0].data, self.blobs[1].data
        Ws = self.blobs[2].data if self.static else None
        Whh, Who, bo = self.blobs[k].data, self.blobs[k + 1].data, self.blobs[k + 2].data
        gx, gs = self.input_transform(bottom, W, b, Ws)
        (h,) = self.initial_state(bottom)
        cont = bottom[1].data
        T, N, H = self.T, self.N, self.H
        self.hc = np.empty((T, N, H), self.dtype)
        self.hs = np.empty((T, N, H), self.dtype)
        for t in range(T):
            self.hc[t] = _cont(cont[t], self.dtype) * h
            a = self.hc[t] @ Whh.T
            a += gx[t]
            if gs is not None:
                a += gs
            h = np.tanh(a)
            self.hs[t] = h
        z = self.hs.reshape(T * N, H) @ Who.T
        z += bo
        top[0].data[...] = np.tanh(z).reshape(T, N, H)
        self.finish_forward([h], top)

    def backward_steps(self, top, propagate_down, bottom):
        k = 3 if self.static else 2
        Whh, Who = self.blobs[k].data, self.blobs[k + 1].data
        cont = bottom[1].data
        T, N, H = self.T, self.N, self.H
        o = top[0].data.reshape(T * N, H)
        one = self.dtype.type(1)
        dz = top[0].diff.reshape(T * N, H) * (one - o * o)
        if self.param_propagate_down[k + 1]:
            self.blobs[k + 1].diff += dz.T @ self.hs.reshape(T * N, H)
        if self.param_propagate_down[k + 2]:
            self.blobs[k + 2].diff += dz.sum(axis=0)
        dh_out = (dz @ Who).reshape(T, N, H)
        dgx = np.empty((T, N, H), self.dtype)
        dh_rec = np.zeros((N, H), self.dtype)
        dWhh = np.zeros_like(Whh) if self.param_propagate_down[k] else None
        for t in range(T - 1, -1, -1):
            dh = dh_out[t] + dh_rec
            da = dh * (one - self.hs[t] * self.hs[t])
            dgx[t] = da
            if dWhh is not None:
                dWhh += da.T @ self.hc[t]
            dh_rec = (da @ Whh) * _cont(cont[t], self.dtype)
        if dWhh is not None:
            self.blobs[k].diff += dWhh
        self.input_backward(bottom, propagate_down, dgx, self.blobs[0].data, 0, 1,
                            self.blobs[2].data if self.static else None, 2)
