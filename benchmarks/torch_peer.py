"""A PyTorch CPU peer for the benchmark: the same graph, the same weights.

``TorchPeer(net)`` walks a built netrun ``Net`` (after a forward pass, so every layer
knows its geometry) and replays it with torch operators, reading the parameters
from the net's blobs.  Used by bench.py only (``--torch``); netrun itself never
imports torch.  Covers the layer types of the benchmark nets (Convolution, Pooling,
LRN, ReLU, BatchNorm, Scale, Eltwise SUM, Concat, Split, Dropout, InnerProduct,
Softmax, Input).
"""
import numpy as np
import torch
import torch.nn.functional as F


class TorchPeer:
    def __init__(self, net, threads=None):
        if threads:
            torch.set_num_threads(threads)
        self.net = net
        self.params = []
        self.ops = [self._op(li, layer) for li, layer in enumerate(net.layers)]

    def _param(self, blob):
        t = torch.from_numpy(np.array(blob.data, np.float32)).requires_grad_(True)
        self.params.append(t)
        return t

    def _op(self, li, layer):
        t = layer.type
        if t == "Input":
            return None
        if t == "Convolution":
            g = layer.geom
            w = self._param(layer.blobs[0])
            b = self._param(layer.blobs[1]) if layer.bias_term else None
            return lambda xs: [F.conv2d(xs[0], w, b, stride=g.stride, padding=g.pad,
                                        dilation=g.dilation, groups=layer.group)]
        if t == "Pooling":
            geo = layer.geom
            k, s, p = (geo.kh, geo.kw), (layer.stride[0], layer.stride[1]), layer.pad
            if layer.method == 0:
                return lambda xs: [F.max_pool2d(xs[0], k, s, p, ceil_mode=layer.ceil)]
            return lambda xs: [F.avg_pool2d(xs[0], k, s, p, ceil_mode=layer.ceil)]
        if t == "LRN":
            return lambda xs: [F.local_response_norm(xs[0], layer.size, layer.alpha,
                                                     layer.beta, layer.k)]
        if t == "ReLU":
            return lambda xs: [F.relu(xs[0])]
        if t in ("Dropout", "Split"):
            n = len(self.net.top_ids[li])
            return lambda xs: [xs[0]] * n
        if t == "BatchNorm":
            s = float(layer.blobs[2].data.reshape(-1)[0])
            f = 0.0 if s == 0 else 1.0 / s
            mean = torch.from_numpy(layer.blobs[0].data * f)
            var = torch.from_numpy(layer.blobs[1].data * f)
            return lambda xs: [F.batch_norm(xs[0], mean, var, training=False, eps=layer.eps)]
        if t == "Scale":
            w = self._param(layer.blobs[0])
            b = self._param(layer.blobs[1]) if layer.bias_term else None
            shape = (1, -1, 1, 1)
            if b is None:
                return lambda xs: [xs[0] * w.view(shape)]
            return lambda xs: [torch.addcmul(b.view(shape), xs[0], w.view(shape))]
        if t == "Eltwise":
            return lambda xs: [sum(xs[1:], xs[0])]
        if t == "Concat":
            return lambda xs: [torch.cat(xs, dim=layer.axis)]
        if t == "InnerProduct":
            w = self._param(layer.blobs[0])
            b = self._param(layer.blobs[1]) if layer.bias_term else None
            return lambda xs: [F.linear(xs[0].flatten(layer.axis), w, b)]
        if t == "Softmax":
            return lambda xs: [F.softmax(xs[0], dim=layer.axis)]
        raise NotImplementedError(f"torch peer: layer type {t}")

    def forward(self, inputs):
        """inputs: {name: array}; returns the net outputs as tensors."""
        net = self.net
        env = {k: torch.from_numpy(np.asarray(v, np.float32)).requires_grad_(True)
               for k, v in inputs.items()}
        for li, op in enumerate(self.ops):
            if op is None:
                continue
            outs = op([env[b] for b in net.bottom_ids[li]])
            for name, o in zip(net.top_ids[li], outs):
                env[name] = o
        self.inputs = env
        return [env[o] for o in net.outputs]

    @staticmethod
    def backward(outputs):
        torch.autograd.backward(outputs, [torch.ones_like(o) for o in outputs])
