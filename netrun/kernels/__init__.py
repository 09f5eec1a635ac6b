"""Kernels: the hot non-GEMM work of the layers, one module per kind of work.

    im2col     convolution geometry, im2col / col2im, the GEMM products (Caffe's own
               BLAS calls) and the bias add after them
    blas       the GEMMs numpy does not make (beta = 1, one row)
    depthwise  depthwise convolution backward
    pooling    MAX / AVE / STOCHASTIC pooling forward and backward
    lrn        LRN across channels
    elementwise  ordered sums (Split, Eltwise), ReLU, the per-channel
               steps of the BatchNorm -> Scale chains
    layout     shapes, window ranges, wide grids
    scratch    reusable per-thread buffers
    tiles      cache-sized tiles of work on all cores
    select     the one place that picks numba or numpy (NETRUN_KERNELS)

Each kernel has a numpy twin and a numba twin of the same signature; the layers
call ``kernels.<name>(...)`` and ``select`` runs the twin of the engine in use
(``kernels.engine()``, ``with kernels.use("numpy"): ...``).
"""
from .depthwise import dw_wide_backward_data, dw_wide_weight_grad
from .elementwise import normalize, relu_backward, relu_forward, scale_bias, sum_into
from .im2col import add_bias, col2im_sum, im2col_copy
from .lrn import lrn_across_backward, lrn_across_forward
from .pooling import (ave_pool, ave_pool_backward, max_pool_backward, max_pool_select,
                      select_to_index)
from .select import ENGINES, engine, numba_available, set_engine, use

__all__ = ["ENGINES", "engine", "numba_available", "set_engine", "use",
           "ave_pool", "ave_pool_backward", "max_pool_backward", "max_pool_select",
           "select_to_index", "col2im_sum", "im2col_copy", "add_bias",
           "lrn_across_backward", "lrn_across_forward", "dw_wide_backward_data",
           "dw_wide_weight_grad", "relu_backward", "relu_forward", "sum_into", "normalize",
           "scale_bias"]
