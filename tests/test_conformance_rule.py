"""The comparison rule of ../shared/conformance/README.md (Tolerances), tested on made-up arrays.

Backward arrays of ``net_`` cases pass by relative L2 (a few full-size flips where near-ties
went the other way are within it; a 10% scale is not); forward arrays and single-layer cases
keep the element-wise rule.
"""
import json

import numpy as np
import pytest

import conformance as C


def make_case(tmp_path, name, expected, summary=None):
    d = tmp_path / name
    d.mkdir()
    (d / "case.json").write_text(json.dumps({"phase": "TEST", "backward": "top_diffs"}))
    np.savez(d / "expected.npz", **expected)
    if summary:
        (d / "summary.json").write_text(json.dumps(summary))
    return C.Case(d)


def ratio(case, ours):
    return C.compare(case, ours).worst[1]


@pytest.fixture
def arr():
    return np.random.RandomState(0).standard_normal((8, 16, 12, 12)).astype(np.float32)


def test_scaled_backward_array_fails(tmp_path, arr):
    case = make_case(tmp_path, "net_x", {"diff/conv1": arr, "param_diff/conv1/0": arr})
    assert ratio(case, {"diff/conv1": arr, "param_diff/conv1/0": arr}) == 0
    rep = C.compare(case, {"diff/conv1": arr * 1.1, "param_diff/conv1/0": arr})
    assert not rep.ok and rep.worst[0] == "diff/conv1" and 1.9 < rep.worst[1] < 2.1
    rep = C.compare(case, {"diff/conv1": arr, "param_diff/conv1/0": arr * 1.1})
    assert not rep.ok and rep.worst[0] == "param_diff/conv1/0"


def test_sparse_flipped_near_ties_pass_within_the_bound(tmp_path, arr):
    """A gradient routed the other way at a few near-tied positions: full-size errors there."""
    case = make_case(tmp_path, "net_x", {"diff/pool1": arr})
    flat = arr.ravel().copy()
    n = flat.size
    pos = np.random.RandomState(1).choice(n, size=n // 4000, replace=False)   # 0.025% flipped
    flat[pos] = -flat[pos]
    ours = flat.reshape(arr.shape)
    rep = C.compare(case, {"diff/pool1": ours})
    assert rep.ok, rep.failures()
    assert 0.3 < rep.worst[1] < 1.0                   # inside, but not trivially
    assert rep.worst_elementwise()[1] > 1000          # element-wise it would fail by far
    # the same flips in a single-layer case, or in a forward array, fail
    single = make_case(tmp_path, "pool_x", {"diff/pool1": arr})
    assert not C.compare(single, {"diff/pool1": ours}).ok
    fwd = make_case(tmp_path, "net_y", {"data/pool1": arr})
    assert not C.compare(fwd, {"data/pool1": ours}).ok
    # many more flips leave the bound
    flat[np.random.RandomState(2).choice(n, size=n // 50, replace=False)] *= -1
    assert not C.compare(case, {"diff/pool1": flat.reshape(arr.shape)}).ok


def test_forward_array_still_fails_at_twice_the_elementwise_tolerance(tmp_path, arr):
    case = make_case(tmp_path, "net_x", {"data/conv1": arr})
    atol = 1e-4 * max(1.0, float(np.abs(arr).max()))
    step = atol + 1e-3 * np.abs(arr)
    ours = arr.astype(np.float64).copy()
    ours.flat[5] += 2 * step.flat[5]
    rep = C.compare(case, {"data/conv1": ours})
    assert not rep.ok and 1.9 < rep.worst[1] < 2.1
    ours = arr.astype(np.float64) + 0.5 * step       # every element at half the tolerance
    assert C.compare(case, {"data/conv1": ours}).ok


def _summary(full, idx):
    return {"count": full.size, "min": float(full.min()), "max": float(full.max()),
            "sum": float(full.sum(dtype=np.float64)),
            "abs_sum": float(np.abs(full).sum(dtype=np.float64)),
            "sq_sum": float(np.square(full, dtype=np.float64).sum()),
            "sample_index": idx.tolist(), "sample": full.ravel()[idx].tolist()}


def test_summary_entries_backward_by_l2_and_sums(tmp_path, arr):
    idx = np.random.RandomState(3).choice(arr.size, 64, replace=False)
    case = make_case(tmp_path, "net_x", {"data/x": arr[:1]},
                     summary={"diff/big": _summary(arr, idx), "data/big": _summary(arr, idx)})
    assert C.compare(case, {"data/x": arr[:1], "diff/big": arr, "data/big": arr}).ok
    # the smallest sampled value flipped: inside the L2 bound for the backward entry only
    flipped = arr.copy()
    small = idx[np.argmin(np.abs(arr.ravel()[idx]))]
    flipped.flat[small] = -flipped.flat[small]
    rep = C.compare(case, {"data/x": arr[:1], "diff/big": flipped, "data/big": arr})
    assert rep.ok, rep.failures()
    rep = C.compare(case, {"data/x": arr[:1], "diff/big": arr, "data/big": flipped})
    assert not rep.ok and rep.worst[0] == "data/big[samples]"
    # a 2% scale of the whole diff moves sq_sum by ~4%: outside the sums' 1e-2
    rep = C.compare(case, {"data/x": arr[:1], "diff/big": arr * 1.02, "data/big": arr})
    assert not rep.ok and rep.worst[0] in ("diff/big[sq_sum]", "diff/big[abs_sum]")


def test_shape_and_nonfinite_mismatches_fail(tmp_path, arr):
    case = make_case(tmp_path, "net_x", {"diff/a": arr})
    assert not C.compare(case, {"diff/a": arr[:2]}).ok
    bad = arr.copy()
    bad.flat[0] = np.nan
    assert not C.compare(case, {"diff/a": bad}).ok
    assert not C.compare(case, {}).ok
