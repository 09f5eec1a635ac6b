"""ONNX Runtime as a forward engine for a :class:`netrun.Net`.

The net is exported in memory (``netrun.export.onnx``, Caffe's semantics) and run
by an ``onnxruntime.InferenceSession`` on the CPU, threads = cores.  The results
are written back into the net's blobs, so everything that reads ``net.blobs``
after a forward (printing, ``--save``) sees what the numpy engine would leave
there; with ``versions=True`` every version of an in-place blob is a graph output
and ``forward(on_layer=...)`` shows each layer's tops as they were right after
it.  Backward stays on netrun's engine.
"""
import os

import numpy as np

from ..errors import NetrunError


def need_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise NetrunError("--engine onnxruntime needs onnxruntime: "
                          "pip install 'netrun[onnx]'") from None
    return onnxruntime


def cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:            # not on Linux
        return os.cpu_count() or 1


class OrtEngine:
    """``OrtEngine(net, versions=False, blobs=(), threads=None)``.

    ``versions``: make every version of every blob a graph output (for per-layer
    display); ``blobs``: extra blobs to fetch (their final values); without either
    only the net's outputs are computed (what ``netrun time`` measures).
    """

    def __init__(self, net, versions=False, blobs=(), threads=None):
        from ..export.onnx import export
        ort = need_onnxruntime()
        for li, layer in enumerate(net.layers):
            if layer.is_loss or any(net.blob_loss_weights.get(t) for t in net.top_ids[li]):
                raise NetrunError("--engine onnxruntime runs deploy graphs, and this layer "
                                  "computes a loss: use the numpy engine", net.where(li))
            if layer.type == "Dropout" and getattr(layer, "phase", 1) == 0 and layer.ratio:
                raise NetrunError("--engine onnxruntime runs deploy graphs, and Dropout drops "
                                  "at random in the TRAIN phase: use --phase test or the numpy "
                                  "engine", net.where(li))
        self.net = net
        wanted = list(net.outputs) + [b for b in blobs if b not in net.outputs]
        wanted = [b for b in wanted if not b.startswith("(automatic")]
        self.export = export(net, outputs=wanted, dynamic_batch=True, all_versions=versions,
                             warn=net._warn)
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or cpu_count())
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(self.export.model.SerializeToString(), so,
                                            providers=["CPUExecutionProvider"])
        self.fetch = [o.name for o in self.session.get_outputs()]
        self.versions = versions

    def run(self, feeds):
        """Raw ORT run: {tensor name: array} for every fetched tensor."""
        return dict(zip(self.fetch, self.session.run(self.fetch, feeds)))

    def feeds(self):
        return {n: np.ascontiguousarray(self.net.blobs[n].data, dtype=np.float32)
                for n in self.export.inputs}

    def forward(self, blobs=None, on_layer=None, **inputs):
        """Like Net.forward: returns {output: array}; fills net.blobs."""
        net = self.net
        for name, arr in inputs.items():
            net.set_input(name, arr)
        got = self.run(self.feeds())
        ex = self.export
        dtype = net.dtype
        for li in range(len(net.layers)):
            done = False
            for j, t in enumerate(net.top_ids[li]):
                tensor = ex.versions.get((li, j))
                if tensor in got:
                    net.blobs[t].data = got[tensor].astype(dtype, copy=False)
                    done = True
            if on_layer is not None and (done or (li, 0) in ex.versions):
                on_layer(li)
        for blob, tensor in ex.outputs.items():
            if tensor in got:
                net.blobs[blob].data = got[tensor].astype(dtype, copy=False)
        net.loss = 0.0
        wanted = list(net.outputs) + [b for b in (blobs or []) if b not in net.outputs]
        return {n: net.blobs[n].data for n in wanted}
