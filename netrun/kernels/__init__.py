"""Kernels: the hot non-GEMM work of the layers (im2col/col2im, pooling, depthwise
convolution backward, tiles of element-wise work, scratch buffers).

One module per kind of work; the layers in netrun/layers call them."""
