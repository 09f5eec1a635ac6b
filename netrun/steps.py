"""The steps of a pass, and what observes them.

``Net.forward`` and ``Net.backward`` run their layers as a plan of *segments* made once
per (direction, range, fusion): a segment is one layer, or a run of in-place layers that
may be fused into one tiled pass (``Net._chain_spans``, netrun/passes.py).  Running a segment yields
*steps*: a fused chain is one step; where a layer of it cannot be cut this time (a
TRAIN-phase BatchNorm) that layer is a step of its own and the rest fuse.

Everything else that happens during a pass watches the steps through one interface,
:class:`Observer`: timers (``timer=``), per-layer callbacks (``on_layer=``, pycaffe's
``before_forward``/``after_backward``...), and freeing blobs after their last reader in
inference mode.  An observer that must see each layer on its own (``per_layer``) turns
fusion off for that pass, as the NaN watch (``check_finite``) does.
"""
from .kernels.scratch import release_scratch


class Step:
    """Layers run as one step, in run order (backward: descending).  ``runs`` is
    False for a backward step of a layer that needs no backward (it was skipped)."""
    __slots__ = ("indices", "runs")

    def __init__(self, indices, runs=True):
        self.indices = indices
        self.runs = runs


class Observer:
    """Sees a pass's steps.  ``before_layer(i)`` is called before layer ``i`` runs on
    its own (an observer that needs it for every layer sets ``per_layer``: the pass then
    fuses nothing); ``after(step)`` after every step."""
    per_layer = False

    def before_layer(self, i):
        pass

    def after(self, step):
        pass


class LayerCallback(Observer):
    """``fn(i)`` after each layer that ran (``on_layer=``)."""
    per_layer = True

    def __init__(self, fn):
        self.fn = fn

    def after(self, step):
        if step.runs:
            for i in step.indices:
                self.fn(i)


class Callbacks(Observer):
    """pycaffe's callbacks: ``before`` and ``after`` functions of the layer index, for
    every layer of the range (as Caffe's ForwardFromTo/BackwardFromTo call them, whether
    or not the layer needs backward)."""
    per_layer = True

    def __init__(self, before=(), after=()):
        self.before_fns, self.after_fns = list(before), list(after)

    def before_layer(self, i):
        for fn in self.before_fns:
            fn(i)

    def after(self, step):
        for i in step.indices:
            for fn in self.after_fns:
                fn(i)


class StepTimer(Observer):
    """``fn(indices)`` after each step that ran (``timer=``): a fused chain is timed as
    one step."""

    def __init__(self, fn):
        self.fn = fn

    def after(self, step):
        if step.runs:
            self.fn(step.indices)


class FreeDead(Observer):
    """Inference mode: free each blob (but ``keep``) after the last layer that reads or
    writes it, and the scratch buffers after every step (one layer's columns at a time)."""

    def __init__(self, net, keep):
        self.net = net
        self.free_after = {}
        for name, li in net.last_uses().items():
            if name not in keep:
                self.free_after.setdefault(li, []).append(name)

    def after(self, step):
        for i in step.indices:
            for name in self.free_after.get(i, ()):
                self.net.blobs[name].free()
        release_scratch()


def observers(extra=(), on_layer=None, timer=None):
    """The observers of one pass: ``extra`` plus those of the keyword forms."""
    obs = [StepTimer(timer)] if timer is not None else []     # first: times the step alone
    obs += extra
    if on_layer is not None:
        obs.append(LayerCallback(on_layer))
    return obs
