"""Running a built net: the forward and backward passes, and pycaffe's batch helpers.

``Net`` (netrun/net.py) holds the graph and Caffe's rules for building it; these
mixins run it.  A pass is a plan of segments made once per (direction, range,
fusion) -- a layer, or a run of in-place layers cut into channel tiles, led in
forward by the layer that made their blob -- and everything that watches a pass
(timers, per-layer callbacks, inference freeing) observes its steps (netrun.steps).
The NaN/Inf watch (``check_finite``) sees every layer on its own.
"""
from collections import OrderedDict

import numpy as np

from . import steps
from .errors import NetrunError
from .kernels.tiles import channel_tiles
from .layers import Layer


class Passes:
    """Net's forward and backward passes (a mixin of netrun.Net)."""

    def forward_layer(self, li):
        """Reshape and run layer ``li``; return its weighted loss."""
        layer = self.layers[li]
        bottom, top = self._bottoms(li), self._tops(li)
        self._call(li, layer.reshape, bottom, top)
        self._call(li, layer.forward, bottom, top)
        if self.check_finite:
            self._watch(li, "forward", "top", [(n, self.blobs[n].data) for n in self.top_ids[li]])
        loss = 0.0
        for t, w in zip(top, layer.loss_weights):
            if w:
                t.diff[...] = w
                loss += float(np.dot(t.data.ravel(), t.diff.ravel()))
        return loss

    def last_uses(self):
        """For every blob, the index of the last layer that reads or writes it."""
        last = {}
        for li in range(len(self.layers)):
            for name in self.bottom_ids[li] + self.top_ids[li]:
                last[name] = li
        return last

    # -- Concat bottoms written in place ---------------------------------------------
    def _concat_joins(self):
        """{concat layer: [(bottom, its first channel)]} for every Concat whose bottoms
        can live inside its top: each made by one layer (not a Split, not an input),
        touched by nothing else but in-place layers before the Concat, and neither
        they nor the top written by any layer after it (so each bottom keeps,
        whenever anything reads it, the values Caffe's separate copy would hold)."""
        joins = getattr(self, "_joins", None)
        if joins is not None:
            return joins
        writers, users = {}, {}
        for li in range(len(self.layers)):
            for name in self.top_ids[li]:
                writers.setdefault(name, []).append(li)
            for name in set(self.bottom_ids[li] + self.top_ids[li]):
                users.setdefault(name, []).append(li)
        joins = {}
        for li, layer in enumerate(self.layers):
            if layer.type != "Concat" or len(self.bottom_ids[li]) < 2:
                continue
            top = self.top_ids[li][0]
            if writers.get(top) != [li]:
                continue
            ok = True
            for name in self.bottom_ids[li]:
                made = writers.get(name, [])
                if (name in self.inputs or not made or self.layers[made[0]].type == "Split"
                        or name in self.bottom_ids[made[0]]           # made in place
                        or self.bottom_ids[li].count(name) > 1):
                    ok = False
                    break
                for k in users[name]:              # only in-place layers, and the Concat
                    if k == made[0] or k == li:
                        continue
                    if k > li or self.bottom_ids[k] != [name] or self.top_ids[k] != [name]:
                        ok = False
                        break
                if not ok:
                    break
            if ok:
                joins[li] = list(self.bottom_ids[li])
        self._joins = joins
        return joins

    def _join_concats(self):
        """Before a forward: make the bottoms of each joinable Concat views of their
        slices of its top, when the top's leading axes hold one item (the slices are
        then contiguous).  Concat.forward skips the bottoms it finds in place; a
        bottom whose shape changed since (a new input shape) is copied as usual."""
        for li, names in self._concat_joins().items():
            layer, top = self.layers[li], self.blobs[self.top_ids[li][0]]
            axis = getattr(layer, "axis", None)
            joined = layer.joined
            if (joined is not None and joined[0] is top._data
                    and all(self.blobs[n]._data is v for n, v in zip(names, joined[1]))):
                continue                                  # as last time
            layer.joined = None
            if axis is None or int(np.prod(top.shape[:axis])) != 1:
                continue
            data, start, views = top.data, 0, []
            for name in names:
                blob = self.blobs[name]
                n = blob.shape[axis] if blob.num_axes == top.num_axes else -1
                view = data[(slice(None),) * axis + (slice(start, start + n),)]
                if n < 0 or view.shape != blob.shape or blob.dtype != top.dtype:
                    break
                start += n
                views.append(view)
            if len(views) == len(names):
                for name, view in zip(names, views):
                    self.blobs[name]._data = view
                layer.joined = (data, views)

    # -- in-place chains run tile by tile -----------------------------------------
    def _chain_spans(self):
        """{first: last} of every run of two or more consecutive layers working in
        place on one blob that can each be cut into channel ranges (Layer's
        channel_forward): BatchNorm -> Scale -> ReLU after a convolution.  In
        forward, a run may be led by the layer that made the blob (Layer's
        lead_forward: a convolution's bias add joins its ReLU's tiles), so a
        convolution and one ReLU are a chain too."""
        spans = getattr(self, "_spans", None)
        if spans is not None:
            return spans

        def capable(k):
            layer = self.layers[k]
            return (len(self.bottom_ids[k]) == 1 and self.bottom_ids[k] == self.top_ids[k]
                    and type(layer).channel_forward is not Layer.channel_forward
                    and not any(layer.loss_weights))

        def leads(k):
            layer = self.layers[k]
            return (k + 1 < len(self.layers) and len(self.top_ids[k]) == 1
                    and self.top_ids[k] != self.bottom_ids[k]
                    and type(layer).lead_forward is not Layer.lead_forward
                    and not any(layer.loss_weights)
                    and capable(k + 1) and self.top_ids[k + 1] == self.top_ids[k])
        spans, led, n, li = {}, {}, len(self.layers), 0
        while li < n:
            j = li
            while j < n and capable(j) and self.top_ids[j] == self.top_ids[li]:
                j += 1
            if j - li >= 2:
                spans[li] = j - 1
            if j > li and li > 0 and leads(li - 1):
                led[li - 1] = j - 1
            li = max(j, li + 1)
        self._spans = spans
        # every member's end (forward) and start (backward): a chain whose first
        # layer cannot be cut this time (TRAIN-phase BatchNorm) fuses the rest
        self._span_end = {k: b for a, b in list(spans.items()) + list(led.items())
                          for k in range(a, b)}
        self._span_start = {k: a for a, b in spans.items() for k in range(a + 1, b + 1)}
        self._leads = set(led)
        return spans

    def _run_chain(self, order, prepare, lead=False):
        """Prepare each layer of ``order`` (prepare(k) -> fn(lo, hi) or None) while they
        agree on one (N, C, S) view, then run the prepared ones together over channel
        tiles.  Returns how many layers ran (0: none could; the caller runs them).
        With ``lead``, the first layer's prepare already ran its forward but for the
        returned part: that part runs even when nothing else joins it."""
        parts, dims = [], None
        for k in order:
            part = self._call(k, prepare, k)          # (forward: after its reshape)
            d = self._call(k, self.layers[k].channel_dims, self._bottoms(k))
            if part is None or d is None or (dims is not None and tuple(d) != dims):
                break
            dims = tuple(d)
            parts.append(part)
        if len(parts) < 2 and not (lead and parts):
            return 0

        def tile(lo, hi):
            for part in parts:
                part(lo, hi)
        itemsize = self.blobs[self.top_ids[order[0]][0]].dtype.itemsize
        self._call(order[0], channel_tiles, tile, *dims, itemsize)
        return len(parts)

    def _forward_chain(self, s, e):
        def prepare(k):
            layer, bottom, top = self.layers[k], self._bottoms(k), self._tops(k)
            layer.reshape(bottom, top)
            if k == s and s in self._leads:
                return layer.lead_forward(bottom, top)
            return layer.channel_forward(bottom, top)
        return self._run_chain(list(range(s, e + 1)), prepare, lead=s in self._leads)

    def _backward_chain(self, last, first):
        order = []
        for k in range(last, first - 1, -1):
            if not (self.layer_need_backward[k] and self.bottom_need_backward[k][0]):
                break
            order.append(k)

        def prepare(k):
            return self.layers[k].channel_backward(self._tops(k), self.bottom_need_backward[k],
                                                   self._bottoms(k))
        return self._run_chain(order, prepare)

    def _plan(self, direction, s, e, fuse):
        """The segments of a pass over layers s..e, in run order (see netrun.steps):
        forward (lo, hi) with lo <= hi, backward (hi, lo) with hi >= lo; a segment of
        several layers is an in-place chain that may run fused.  Made once per pass kind."""
        key = (direction, s, e, fuse)
        plans = self.__dict__.setdefault("_plans", {})
        if key in plans:
            return plans[key]
        segs = []
        if fuse:
            self._chain_spans()
        if direction == "forward":
            ends = self._span_end if fuse else {}
            li = s
            while li <= e:
                hi = min(ends.get(li, li), e)
                segs.append((li, hi))
                li = hi + 1
        else:
            starts = self._span_start if fuse else {}
            li = s
            while li >= e:
                lo = max(starts.get(li, li), e)
                segs.append((li, lo))
                li = lo - 1
        plans[key] = segs
        return segs

    def _fuses(self, obs):
        return not self.check_finite and not any(o.per_layer for o in obs)

    def forward(self, blobs=None, start=None, end=None, on_layer=None, timer=None,
                observers=(), **inputs):
        """Run layers ``start``..``end`` (names or indices, inclusive).

        Keyword arguments are arrays for input blobs.  Returns a dict of the
        net outputs -- with ``end``, of that layer's tops, as pycaffe -- plus the
        blobs named in ``blobs``; the total weighted loss
        is kept in ``self.loss``.  In inference mode (``Net(..., inference=True)``)
        every other blob is freed as soon as its last reader has run.
        ``on_layer(i)`` is called after layer ``i`` has run (and makes every layer
        run on its own); ``timer(indices)`` after each step, a layer or a chain of
        in-place layers run together; ``observers``: more netrun.steps.Observer.
        """
        if self.engine != "numpy":
            return self._engine_forward(blobs, start, end, on_layer, timer, observers, inputs)
        for name, arr in inputs.items():
            self.set_input(name, arr)
        s = self._layer_index(start, 0)
        e = self._layer_index(end, len(self.layers) - 1)
        self._join_concats()
        obs = steps.observers(observers, on_layer, timer)
        if self.inference:
            obs.append(steps.FreeDead(self, set(self.outputs) | set(blobs or ())))
        loss = 0.0
        for lo, hi in self._plan("forward", s, e, self._fuses(obs)):
            li = lo
            while li <= hi:
                ran = self._forward_chain(li, hi) if li < hi else 0
                if not ran:
                    for o in obs:
                        o.before_layer(li)
                    loss += self.forward_layer(li)
                    ran = 1
                step = steps.Step(range(li, li + ran))
                for o in obs:
                    o.after(step)
                li += ran
        self.loss = loss
        base = list(self.top_ids[e]) if end is not None else list(self.outputs)  # as pycaffe
        wanted = base + [b for b in (blobs or []) if b not in base]
        return OrderedDict((n, self.blobs[n].data) for n in wanted)

    def backward_layer(self, li):
        """Run layer ``li`` backward (if it needs it); watch its diffs for NaN/Inf."""
        if not self.layer_need_backward[li]:
            return False
        layer = self.layers[li]
        self._call(li, layer.backward, self._tops(li), self.bottom_need_backward[li],
                   self._bottoms(li))
        if self.check_finite:
            arrays = [(n, self.blobs[n].diff) for j, n in enumerate(self.bottom_ids[li])
                      if self.bottom_need_backward[li][j]]
            arrays += [(f"parameter {k}", b.diff) for k, b in enumerate(layer.blobs)
                       if layer.param_propagate_down[k]]
            self._watch(li, "backward", "diff of", arrays)
        return True

    def backward(self, diffs=None, start=None, end=None, on_layer=None, timer=None,
                 observers=(), **top_diffs):
        """Run backward from layer ``start`` down to ``end`` (inclusive).

        Keyword arguments set the diffs of output blobs first.  Returns a dict of
        the input blobs' diffs -- with ``end``, of that layer's bottoms, as pycaffe --
        plus the blobs named in ``diffs``.  ``on_layer(i)``
        is called after layer ``i`` has run backward; ``timer`` and ``observers``
        as in forward.
        """
        if self.engine != "numpy":
            raise NetrunError(f"backward runs on netrun's own engine: this net runs its "
                              f"forward on {self.engine} (build it with engine='numpy')")
        for name, arr in top_diffs.items():
            if name not in self.blobs:
                raise NetrunError(f'"{name}" is not a blob of the net')
            arr = np.asarray(arr, self.dtype)
            if arr.shape != self.blobs[name].shape:
                if arr.size != self.blobs[name].count:
                    raise NetrunError(f'top diff for "{name}" has shape {arr.shape}, '
                                      f"the blob has {self.blobs[name].shape}")
                arr = arr.reshape(self.blobs[name].shape)
            self.blobs[name].diff[...] = arr
        s = self._layer_index(start, len(self.layers) - 1)
        e = self._layer_index(end, 0)
        obs = steps.observers(observers, on_layer, timer)
        for hi, lo in self._plan("backward", s, e, self._fuses(obs)):
            li = hi
            while li >= lo:
                ran = self._backward_chain(li, lo) if li > lo else 0
                if ran:
                    step = steps.Step(range(li, li - ran, -1))
                else:
                    for o in obs:
                        o.before_layer(li)
                    step = steps.Step(range(li, li - 1, -1), self.backward_layer(li))
                    ran = 1
                for o in obs:
                    o.after(step)
                li -= ran
        base = list(self.bottom_ids[e]) if end is not None else list(self.inputs)  # as pycaffe
        wanted = base + [b for b in (diffs or []) if b not in base]
        return OrderedDict((n, self.blobs[n].diff) for n in wanted)

    def engine_session(self, versions=False, blobs=()):
        """The forward engine of a net built with ``engine="onnxruntime"``: an
        ``OrtEngine`` of this net (made once per (versions, blobs), the net exported
        in memory), whose ``run(feeds)`` is ONNX Runtime's own call."""
        key = (bool(versions), tuple(blobs or ()))
        if key not in self._engines:
            from .engines.onnxruntime import OrtEngine
            self._engines[key] = OrtEngine(self, versions=versions, blobs=key[1])
        return self._engines[key]

    def _engine_forward(self, blobs, start, end, on_layer, timer, observers, inputs):
        """forward() on another engine: the whole net, its results written into the
        blobs; ``on_layer`` sees every layer's tops as they were right after it."""
        if start is not None or end is not None or timer is not None or observers:
            raise NetrunError(f"the {self.engine} engine runs the whole net at once: "
                              "start, end, timer and observers need engine='numpy'")
        engine = self.engine_session(versions=on_layer is not None, blobs=blobs or ())
        return engine.forward(blobs=blobs, on_layer=on_layer, **inputs)

    def _watch(self, li, phase, what, arrays):
        """Report the first NaN/Inf (once per net); raise in strict mode."""
        if self._nonfinite_seen and self.check_finite != "strict":
            return
        for name, arr in arrays:
            if arr.size and not np.isfinite(arr).all():
                bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
                msg = (f"{self._layer_where[li]}: {bad} non-finite value(s) (NaN/Inf) first "
                       f"appeared in {what} \"{name}\" during {phase}")
                self._nonfinite_seen = True
                if self.check_finite == "strict":
                    raise NetrunError(msg)
                self._warn(msg)
                return


class Batches:
    """pycaffe's forward_all / forward_backward_all: arrays of any number of items run
    in the net's batches (a mixin of netrun.Net)."""

    def _batches(self, arrays):
        """pycaffe's ``_batch``: cut arrays of N items into the net's batches.

        The batch size is the first dimension of the blob of the first array
        given; the last batch is padded with zeros.  Yields (batch dict, number
        of real items in it)."""
        arrays = OrderedDict((k, np.asarray(v)) for k, v in arrays.items())
        for name, arr in arrays.items():
            if name not in self.blobs:
                raise NetrunError(f'"{name}" is not a blob of the net')
            if arr.ndim == 0:
                raise NetrunError(f'"{name}": need an array of items (first dimension), got a scalar')
        counts = {name: len(arr) for name, arr in arrays.items()}
        if len(set(counts.values())) > 1:
            raise NetrunError("the arrays have different numbers of items: " +
                              ", ".join(f"{k} {n}" for k, n in counts.items()))
        first = next(iter(arrays))
        size = self.blobs[first].shape[0] if self.blobs[first].num_axes else 1
        total = counts[first]
        for i in range(0, total, max(size, 1)):
            used = min(size, total - i)
            batch = OrderedDict()
            for name, arr in arrays.items():
                chunk = arr[i:i + used]
                if used < size:
                    pad = np.zeros((size - used,) + arr.shape[1:], arr.dtype)
                    chunk = np.concatenate([chunk, pad])
                batch[name] = chunk
            yield batch, used

    @staticmethod
    def _collect(store, values, used, size):
        for name, arr in values.items():
            arr = np.asarray(arr)
            # batched blobs keep their real items; others (a loss) are stacked per batch
            piece = arr[:used].copy() if arr.ndim and arr.shape[0] == size else arr[None].copy()
            store.setdefault(name, []).append(piece)

    def forward_all(self, blobs=None, **kwargs):
        """pycaffe's ``forward_all``: run arrays of any number of items through
        the net in batches of its batch size (the last one zero-padded, the
        padding dropped from the results).  Returns {blob: array} for the
        outputs and the blobs named in ``blobs``; the net keeps its shapes."""
        if not kwargs:
            return OrderedDict((k, v.copy()) for k, v in self.forward(blobs=blobs).items())
        store = OrderedDict()
        for batch, used in self._batches(kwargs):
            size = len(next(iter(batch.values())))
            self._collect(store, self.forward(blobs=blobs, **batch), used, size)
        return OrderedDict((k, np.concatenate(v)) for k, v in store.items())

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """pycaffe's ``forward_backward_all``: ``forward_all`` and backward in
        batches.  Keyword arrays name input blobs (for forward) and output blobs
        (their diffs, for backward; a net with a loss needs none).  Returns
        (outputs + ``blobs``, input diffs + ``diffs``) as two dicts of arrays."""
        extra = [k for k in kwargs if k not in self.inputs and k not in self.outputs]
        if extra:
            raise NetrunError(f"{', '.join(extra)}: not an input or output of the net "
                              f"(inputs: {', '.join(self.inputs) or 'none'}; "
                              f"outputs: {', '.join(self.outputs)})")
        if not kwargs:
            out = self.forward(blobs=blobs)
            grad = self.backward(diffs=diffs)
            return (OrderedDict((k, v.copy()) for k, v in out.items()),
                    OrderedDict((k, v.copy()) for k, v in grad.items()))
        outs, grads = OrderedDict(), OrderedDict()
        for batch, used in self._batches(kwargs):
            size = len(next(iter(batch.values())))
            fwd = {k: v for k, v in batch.items() if k in self.inputs}
            bwd = {k: v for k, v in batch.items() if k not in fwd}
            self._collect(outs, self.forward(blobs=blobs, **fwd), used, size)
            self._collect(grads, self.backward(diffs=diffs, **bwd), used, size)
        return (OrderedDict((k, np.concatenate(v)) for k, v in outs.items()),
                OrderedDict((k, np.concatenate(v)) for k, v in grads.items()))
