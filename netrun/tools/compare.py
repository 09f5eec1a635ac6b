"""Compare two sets of named arrays (two .npz files), numpy.allclose-style.

For every key in both: ``ok`` when the shapes are equal and, elementwise,
``|a - b| <= atol + rtol * |b|`` (``b``, the second file, is the reference; NaN
matches NaN at the same place, an infinity matches the same infinity).  Reported
per key:

* ``max_abs``: ``max |a - b|``;
* ``max_rel``: ``max |a - b| / max(|a|, |b|)`` (0 where both are 0), a symmetric
  relative difference between 0 and 2;
* ``worst``:   ``max |a - b| / (atol + rtol * |b|)``, 1.0 meaning at the tolerance.

Keys present in one file only are listed; they fail the comparison only when
``strict_keys``.
"""
import numpy as np


def compare_arrays(a, b, rtol=1e-5, atol=1e-8):
    a = np.asarray(a)
    b = np.asarray(b)
    row = {"shape_a": list(a.shape), "shape_b": list(b.shape), "dtype_a": a.dtype.name,
           "dtype_b": b.dtype.name, "max_abs": None, "max_rel": None, "worst": None,
           "mismatched": None, "count": int(b.size), "ok": False, "reason": ""}
    if a.shape != b.shape:
        row["reason"] = f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
        return row
    if a.size == 0:
        row.update(max_abs=0.0, max_rel=0.0, worst=0.0, mismatched=0, ok=True)
        return row
    x = a.astype(np.float64)
    y = b.astype(np.float64)
    same = (x == y) | (np.isnan(x) & np.isnan(y))
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        diff = np.where(same, 0.0, np.abs(x - y))
        diff = np.where(np.isnan(diff), np.inf, diff)       # NaN against a number
        denom = np.maximum(np.abs(x), np.abs(y))
        rel = np.where(diff == 0, 0.0, diff / np.where(denom == 0, 1.0, denom))
        rel = np.where(np.isnan(rel), np.inf, rel)
        tol = atol + rtol * np.abs(y)
        ok = same | (diff <= tol)
        ratio = np.where(diff == 0, 0.0, diff / np.where(tol > 0, tol, np.inf))
        ratio = np.where(np.isnan(ratio), np.inf, ratio)
    bad = int(np.count_nonzero(~ok))
    row.update(max_abs=float(diff.max()), max_rel=float(rel.max()), worst=float(ratio.max()),
               mismatched=bad, ok=bad == 0)
    if bad:
        at = int(np.argmax(np.where(ok, -1.0, ratio)))
        idx = np.unravel_index(at, a.shape)
        row["reason"] = (f"{bad} of {a.size} elements beyond tolerance; worst at "
                         f"{tuple(int(i) for i in idx)}: {x[idx]:.8g} vs {y[idx]:.8g}")
        row["worst_index"] = [int(i) for i in idx]
    return row


def compare_files(a, b, rtol=1e-5, atol=1e-8, strict_keys=False):
    """Compare two dicts of arrays; returns the report dict (``ok``: all passed)."""
    rows = []
    for key in sorted(set(a) & set(b)):
        row = compare_arrays(a[key], b[key], rtol, atol)
        row["key"] = key
        rows.append(row)
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    ok = all(r["ok"] for r in rows) and (not strict_keys or not (only_a or only_b))
    return {"keys": rows, "only_in_a": only_a, "only_in_b": only_b, "rtol": rtol, "atol": atol,
            "ok": ok}
