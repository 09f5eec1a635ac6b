"""Layers that route, join, cut or reshape blobs (Split, Silence, Concat, Slice, Flatten,
Reshape, Tile, Filter, BatchReindex, Parameter): data moves, no arithmetic beyond the sums
of their gradients."""
import numpy as np

from .. import kernels
from ..errors import LayerError, check
from .base import Layer, canonical_axis, no_gradient, not_in_place, register, shape_count


@register("Split")
class Split(Layer):
    """Every top shares the bottom's data;  dE/dx = sum_i dE/dy_i.

    Caffe inserts one for every blob that feeds more than one bottom.
    """
    exact_bottoms = 1
    min_tops = 1

    def reshape(self, bottom, top):
        for t in top:
            check(t is not bottom[0], "Split cannot run in place")
            t.reshape_like(bottom[0])
            t.share_data(bottom[0])

    def forward(self, bottom, top):
        for t in top:
            t.share_data(bottom[0])

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        out = bottom[0].diff
        if len(top) == 1:
            out[...] = top[0].diff
            return
        kernels.sum_into(out, [t.diff for t in top])


@register("Silence")
class Silence(Layer):
    """No tops: swallows its bottoms so they are not net outputs; gradient 0."""
    min_bottoms = 1
    exact_tops = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for b, p in zip(bottom, propagate_down):
            if p:
                b.diff[...] = 0


@register("Concat")
class Concat(Layer):
    """Joins the bottoms along ``axis`` (concat_param.axis, default 1; the legacy
    ``concat_dim`` is a non-negative axis).  Every other dimension must agree.

    y = [x_1, x_2, ...] along the axis;  dE/dx_i = the matching slice of dE/dy
    """
    min_bottoms = 1
    exact_tops = 1

    joined = None           # (top array, [view per bottom]): set by Net._join_concats

    def setup(self, bottom, top):
        p = self.param.concat_param
        check(not (p.HasField("axis") and p.HasField("concat_dim")),
              "Concat takes either axis or concat_dim, not both")
        not_in_place(self, bottom, top)

    def reshape(self, bottom, top):
        p = self.param.concat_param
        n = bottom[0].num_axes
        if p.HasField("concat_dim"):
            self.axis = int(p.concat_dim)
            check(self.axis < n, f"concat_dim {self.axis} out of range for a {n}-D input")
        else:
            self.axis = canonical_axis(p.axis, n)
        shape = list(bottom[0].shape)
        for i, b in enumerate(bottom[1:], 1):
            ok = b.num_axes == n and all(b.shape[j] == shape[j] for j in range(n) if j != self.axis)
            if not ok:
                raise LayerError(f"bottom {i} has shape {b.shape}, bottom 0 has {bottom[0].shape}: "
                                 f"Concat needs equal shapes except at axis {self.axis}")
            shape[self.axis] += b.shape[self.axis]
        top[0].reshape(shape)

    def forward(self, bottom, top):
        if len(bottom) == 1:
            top[0].data[...] = bottom[0].data
            return
        y = top[0].data
        joined = self.joined if self.joined and self.joined[0] is y else None
        if joined is None:
            np.concatenate([b.data for b in bottom], axis=self.axis, out=y)
            return
        start, lead = 0, (slice(None),) * self.axis
        for b, view in zip(bottom, joined[1]):  # the net made these bottoms views of y
            n = b.shape[self.axis]
            if b._data is not view:
                y[lead + (slice(start, start + n),)] = b.data
            start += n

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        start = 0
        for b, p in zip(bottom, propagate_down):
            n = b.shape[self.axis]
            if p:
                idx = (slice(None),) * self.axis + (slice(start, start + n),)
                b.diff[...] = dy[idx]
            start += n


@register("Slice")
class Slice(Layer):
    """Splits the bottom along ``axis`` (slice_param.axis, default 1; legacy ``slice_dim``)
    at the ``slice_point``s (one fewer than the tops, strictly increasing), or into
    equal parts when none are given.

    y_i = x[..., p_{i-1}:p_i, ...];   dE/dx = the dE/dy_i put back in place
    """
    exact_bottoms = 1
    min_tops = 1

    def setup(self, bottom, top):
        p = self.param.slice_param
        check(not (p.HasField("axis") and p.HasField("slice_dim")),
              "Slice takes either axis or slice_dim, not both")
        not_in_place(self, bottom, top)

    def reshape(self, bottom, top):
        p = self.param.slice_param
        shape = list(bottom[0].shape)
        n = len(shape)
        if p.HasField("slice_dim"):
            self.axis = int(p.slice_dim)
            check(self.axis < n, f"slice_dim {self.axis} out of range for a {n}-D input")
        else:
            self.axis = canonical_axis(p.axis, n)
        dim = shape[self.axis]
        points = list(p.slice_point)
        if points:
            check(len(points) == len(top) - 1,
                  f"Slice has {len(points)} slice_point(s) for {len(top)} tops "
                  "(needs one fewer than the tops)")
            check(len(top) <= dim, f"Slice: {len(top)} tops for axis {self.axis} of size {dim} "
                                   f"(input {bottom[0].shape})")
            prev, sizes = 0, []
            for q in points:
                check(q > prev, f"slice_point values must increase strictly from 1, got {points}")
                sizes.append(q - prev)
                prev = q
            check(dim - prev >= 0, f"slice_point {prev} is past the end of axis {self.axis} "
                                   f"(size {dim}, input {bottom[0].shape})")
            sizes.append(dim - prev)
        else:
            check(dim % len(top) == 0, f"{len(top)} tops do not evenly divide axis {self.axis} "
                                       f"of size {dim} (input {bottom[0].shape})")
            sizes = [dim // len(top)] * len(top)
        self.bounds = []
        start = 0
        for t, s in zip(top, sizes):
            shape[self.axis] = s
            t.reshape(shape)
            self.bounds.append((start, start + s))
            start += s

    def _index(self, a, b):
        return (slice(None),) * self.axis + (slice(a, b),)

    def forward(self, bottom, top):
        x = bottom[0].data
        for t, (a, b) in zip(top, self.bounds):
            t.data[...] = x[self._index(a, b)]

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        for t, (a, b) in zip(top, self.bounds):
            dx[self._index(a, b)] = t.diff


class _View(Layer):
    """A top that is the bottom's data under another shape (Flatten, Reshape)."""

    def forward(self, bottom, top):
        top[0].data = bottom[0].data.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff.reshape(bottom[0].shape)


@register("Flatten")
class Flatten(_View):
    """Merges axes ``axis``..``end_axis`` (flatten_param; defaults 1 and -1) into one.

    The top is a view of the bottom's data (Caffe shares the memory);
    dE/dx = dE/dy reshaped.  No in-place computation.
    """
    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom, top):
        not_in_place(self, bottom, top)

    def reshape(self, bottom, top):
        p = self.param.flatten_param
        shape = bottom[0].shape
        n = len(shape)
        start = canonical_axis(p.axis, n)
        end = canonical_axis(p.end_axis, n)
        check(end + 1 >= start, f"flatten_param end_axis {p.end_axis} comes before axis {p.axis} "
                                f"(input {shape})")
        top[0].reshape(shape[:start] + (shape_count(shape, start, end + 1),) + shape[end + 1:])


@register("Reshape")
class Reshape(_View):
    """Gives the bottom a new shape without touching the data (reshape_param).

    ``shape`` replaces the axes ``axis`` .. ``axis + num_axes`` (defaults 0 and -1 =
    all; a negative axis counts from the end, -1 being past the last); in it, 0
    copies the bottom's dimension at that position and a single -1 is inferred
    from the count.  The top is a view of the bottom's data (Caffe shares the
    memory); dE/dx = dE/dy reshaped.  No in-place computation.
    """
    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom, top):
        not_in_place(self, bottom, top)
        dims = list(self.param.reshape_param.shape.dim)
        self.copy_axes = [i for i, d in enumerate(dims) if d == 0]
        inferred = [i for i, d in enumerate(dims) if d == -1]
        check(len(inferred) <= 1, f"reshape_param.shape {dims} has more than one -1")
        bad = [d for d in dims if d < -1]
        check(not bad, f"reshape_param.shape {dims} has a dimension below -1")
        self.inferred = inferred[0] if inferred else -1
        self.constant = int(np.prod([d for d in dims if d > 0], dtype=np.int64))
        self.dims = dims

    def reshape(self, bottom, top):
        p = self.param.reshape_param
        shape = bottom[0].shape
        n = len(shape)
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        check(0 <= start <= n, f"reshape_param.axis {p.axis} out of range for a {n}-D input")
        check(p.num_axes >= -1, f"reshape_param.num_axes must be >= 0, or -1 for all; got "
                                f"{p.num_axes}")
        end = n if p.num_axes == -1 else start + p.num_axes
        check(end <= n, f"reshape_param axis + num_axes = {end} is past the {n} axes of the input "
                        f"{shape}")
        new = list(shape[:start]) + list(self.dims) + list(shape[end:])
        for i in self.copy_axes:
            check(start + i < n, f"reshape_param.shape has a 0 at position {i} but the input "
                                 f"{shape} has no axis {start + i} to copy")
            new[start + i] = shape[start + i]
        if self.inferred >= 0:
            known = self.constant * shape_count(shape, 0, start) * shape_count(shape, end)
            for i in self.copy_axes:
                known *= new[start + i]
            total = shape_count(shape)
            if known == 0 or total % known:
                raise LayerError(f"cannot infer the -1 of reshape_param.shape {self.dims}: the "
                                 f"input {shape} has {total} elements, not divisible by {known}")
            new[start + self.inferred] = total // known
        if shape_count(new) != bottom[0].count:
            raise LayerError(f"reshape to {tuple(new)} ({shape_count(new)} elements) does not fit the "
                             f"input {shape} ({bottom[0].count} elements)")
        top[0].reshape(new)


@register("Tile")
class Tile(Layer):
    """Repeats the block of axes ``axis``.. ``tiles`` times (tile_param; axis default 1):
    for every index over the leading axes, the whole trailing block is copied
    ``tiles`` times one after the other, so the top's ``axis`` is ``tiles`` times longer.

    dE/dx = sum over the copies of dE/dy
    """
    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom, top):
        p = self.param.tile_param
        check(p.HasField("tiles"), "Tile needs tile_param.tiles")
        check(p.tiles > 0, f"tile_param.tiles must be positive, got {p.tiles}")
        self.tiles = int(p.tiles)
        not_in_place(self, bottom, top)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self.axis = canonical_axis(self.param.tile_param.axis, len(shape))
        self.outer = shape_count(shape, 0, self.axis)
        self.inner = shape_count(shape, self.axis)
        new = list(shape)
        new[self.axis] *= self.tiles
        top[0].reshape(new)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.outer, 1, self.inner)
        top[0].data.reshape(self.outer, self.tiles, self.inner)[...] = x

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dy = top[0].diff.reshape(self.outer, self.tiles, self.inner)
            bottom[0].diff.reshape(self.outer, self.inner)[...] = dy.sum(axis=1)


@register("Filter")
class Filter(Layer):
    """Keeps the items (along axis 0) whose selector is non-zero.

    The last bottom is the selector (shape (N,) or (N, 1, ...)); each other bottom i
    (first axis N) gives top i = bottom_i[selected].  The top's first axis is N at
    the first reshape (as in Caffe, before any data is seen), afterwards the number
    selected.  dE/dx_i = dE/dy scattered back to the selected items, 0 elsewhere.
    No gradient to the selector.
    """
    min_bottoms = 2
    min_tops = 1

    def setup(self, bottom, top):
        check(len(top) == len(bottom) - 1,
              f"Filter needs one top per filtered bottom: {len(bottom)} bottoms (the last is the "
              f"selector) need {len(bottom) - 1} tops, got {len(top)}")
        not_in_place(self, bottom, top)
        self.first_reshape = True
        self.indices = None
        self._warned = False
        self._selector = len(bottom) - 1

    def allow_force_backward(self, bottom_index):
        selector = getattr(self, "_selector", len(self.param.bottom) - 1)
        return bottom_index != selector

    def reshape(self, bottom, top):
        sel = bottom[-1]
        check(all(d == 1 for d in sel.shape[1:]),
              f"the selector {sel.shape} must have size 1 on every axis but the first")
        for i, b in enumerate(bottom[:-1]):
            if not b.num_axes or b.shape[0] != sel.shape[0]:
                raise LayerError(f"bottom {i} has shape {b.shape}, the selector {sel.shape}: "
                                 "their first axes must match")
        if self.first_reshape:
            self.first_reshape = False
            self.indices = np.arange(sel.shape[0])
            n = bottom[0].shape[0]
        else:
            self.indices = np.flatnonzero(sel.data.reshape(sel.shape[0], -1)[:, 0] != 0) \
                if sel.shape[0] else np.zeros(0, np.int64)
            n = len(self.indices)
        for t, b in zip(top, bottom):
            t.reshape((n,) + b.shape[1:])

    def forward(self, bottom, top):
        for t, b in zip(top, bottom):
            np.take(b.data, self.indices, axis=0, out=t.data)

    def backward(self, top, propagate_down, bottom):
        for t, b, p in zip(top, bottom, propagate_down):
            if p:
                dx = b.diff
                dx[...] = 0
                dx[self.indices] = t.diff
        if propagate_down[-1]:
            no_gradient(self, bottom[-1], "the selector")


@register("BatchReindex")
class BatchReindex(Layer):
    """y[i] = x[int(idx[i])]: picks (and may repeat) items of bottom 0 along axis 0 by the
    1-D index blob bottom 1 (0 <= idx < N).

    dE/dx[n] = sum of dE/dy[i] over the i with idx[i] = n (0 for items not picked).
    No gradient to the indices.
    """
    exact_bottoms = 2
    exact_tops = 1

    def setup(self, bottom, top):
        not_in_place(self, bottom, top)
        self._warned = False

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def reshape(self, bottom, top):
        check(bottom[1].num_axes == 1,
              f"BatchReindex needs a 1-D index blob, got shape {bottom[1].shape}")
        check(bottom[0].num_axes >= 1, "BatchReindex needs an input with at least 1 axis")
        top[0].reshape((bottom[1].shape[0],) + bottom[0].shape[1:])

    def _indices(self, bottom):
        r = bottom[1].data
        n = bottom[0].shape[0]
        bad = ~((r >= 0) & (r < n))                   # NaN is out of range too
        if bad.any():
            raise LayerError(f"BatchReindex index {float(r[bad][0]):g} out of range for a batch "
                             f"of {n}")
        return r.astype(np.int64)

    def forward(self, bottom, top):
        np.take(bottom[0].data, self._indices(bottom), axis=0, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            no_gradient(self, bottom[1], "the indices")
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        dx[...] = 0
        np.add.at(dx, self._indices(bottom), top[0].diff)


@register("Parameter")
class Parameter(Layer):
    """Exposes one learnable blob (parameter_param.shape) as its top: the top is the
    blob's data; backward adds the top's diff into the blob's diff.  Caffe leaves
    the blob zero-initialised (no filler); weights come from a .caffemodel.
    """
    exact_bottoms = 0
    exact_tops = 1

    def setup(self, bottom, top):
        self.shape = tuple(int(d) for d in self.param.parameter_param.shape.dim)
        self.blobs = [self.new_param(self.shape)]
        top[0].reshape(self.shape)

    def reshape(self, bottom, top):
        top[0].reshape(self.blobs[0].shape)

    def forward(self, bottom, top):
        top[0].share_data(self.blobs[0])

    def backward(self, top, propagate_down, bottom):
        if self.param_propagate_down and self.param_propagate_down[0]:
            self.blobs[0].diff += top[0].diff
