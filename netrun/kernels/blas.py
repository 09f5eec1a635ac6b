"""The BLAS calls numpy does not make: C += A @ B (a GEMM with beta = 1), and a GEMM
with one row (numpy makes it a GEMV).

Caffe adds every parameter gradient into the diff with ``caffe_cpu_gemm(..., beta=1)``:
BLAS adds each block of the product into C as it goes, C is read and written once,
and nothing as large as the weights is allocated.  numpy's ``c += a @ b`` builds the
product in a fresh array (page faults for every new megabyte: ResNet-50's 25M
weights cost ~16 ms a backward pass in the extra add alone) and then adds it, which
also rounds differently from Caffe once C holds something (Caffe: ``(C + p1) + p2``
over BLAS's K-blocks, numpy: ``C + (p1 + p2)``).

``gemm_acc`` calls ``cblas_sgemm``/``cblas_dgemm`` of the OpenBLAS that numpy itself
loaded (numpy's wheels bundle it as ``scipy_openblas``; its 64-bit-integer symbols
are found through ctypes), so the kernels, the threads and the numbers are those of
numpy's own matmul.  Where that library cannot be found (another BLAS, another
platform's layout) or an operand is not a strided matrix BLAS can read, the product
goes through a reused scratch buffer and is then added: the same numbers as before
this module existed.
"""
import ctypes
import glob
import os
import sys

import numpy as np

from .scratch import scratch

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_cblas = None          # None: not looked for yet; then {dtype: function} or {}


def _numpy_blas_paths():
    """Files of the OpenBLAS numpy loaded: from the process's maps (Linux), else the
    folder numpy's wheels ship it in."""
    paths = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rstrip("\n").split(" ")[-1]
                if "openblas" in os.path.basename(path).lower() and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    base = os.path.dirname(os.path.dirname(np.__file__))
    for folder in ("numpy.libs", os.path.join("numpy", ".dylibs")):
        paths += sorted(glob.glob(os.path.join(base, folder, "*openblas*")))
    return paths


def _find_cblas():
    found = {}
    info = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    if "openblas" not in str(info.get("name", "")).lower() or sys.platform == "win32":
        return found
    for path in _numpy_blas_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for dtype, name in ((np.float32, "sgemm"), (np.float64, "dgemm")):
            for symbol, int_t in ((f"scipy_cblas_{name}64_", ctypes.c_int64),
                                  (f"cblas_{name}64_", ctypes.c_int64)):
                fn = getattr(lib, symbol, None)
                if fn is None:
                    continue
                real = ctypes.c_float if dtype == np.float32 else ctypes.c_double
                fn.restype = None
                fn.argtypes = ([ctypes.c_int] * 3 + [int_t] * 3 + [real, ctypes.c_void_p, int_t,
                               ctypes.c_void_p, int_t, real, ctypes.c_void_p, int_t])
                found[np.dtype(dtype)] = fn
                break
        if found:
            break
    return found


def cblas():
    """{dtype: cblas ?gemm of numpy's OpenBLAS} (empty when it cannot be found)."""
    global _cblas
    if _cblas is None:
        try:
            _cblas = _find_cblas()
        except Exception:                      # noqa: BLE001 - any failure: the fallback
            _cblas = {}
    return _cblas


def _operand(a):
    """(transposed, leading dimension) of a 2-D matrix BLAS can read in place, else None."""
    m, n = a.shape
    item = a.itemsize
    s0, s1 = a.strides
    if (n == 1 or s1 == item) and (m == 1 or (s0 % item == 0 and s0 // item >= n)):
        return False, (n if m == 1 else s0 // item)
    if (m == 1 or s0 == item) and (n == 1 or (s1 % item == 0 and s1 // item >= m)):
        return True, (m if n == 1 else s1 // item)
    return None


def gemm_acc(a, b, c):
    """c += a @ b for 2-D a (M, K), b (K, N), c (M, N) C-contiguous, as one BLAS GEMM
    with beta = 1 (Caffe's accumulation into a parameter diff)."""
    return _gemm(a, b, c, 1.0)


def gemm(a, b, c):
    """c = a @ b as one BLAS GEMM (beta = 0) whatever the shapes: numpy's matmul makes a
    product with one row a GEMV, which sums in another order than the GEMM Caffe calls
    (InnerProduct at batch 1)."""
    return _gemm(a, b, c, 0.0)


def _gemm(a, b, c, beta):
    M, K = a.shape
    N = b.shape[1]
    if M == 0 or N == 0:
        return c
    fn = cblas().get(c.dtype)
    ta, tb = _operand(a), _operand(b)
    if (K == 0 or fn is None or ta is None or tb is None or a.dtype != c.dtype
            or b.dtype != c.dtype or not c.flags.c_contiguous):
        if beta == 0.0:
            return np.matmul(a, b, out=c)
        prod = np.matmul(a, b, out=scratch("gemm_acc", (M, N), c.dtype))
        np.add(c, prod, out=c)
        return c
    fn(_ROW_MAJOR, _TRANS if ta[0] else _NO_TRANS, _TRANS if tb[0] else _NO_TRANS,
       M, N, K, 1.0, a.ctypes.data, ta[1], b.ctypes.data, tb[1], beta, c.ctypes.data, N)
    return c
