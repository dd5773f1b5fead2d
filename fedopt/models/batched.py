"""Stacked-parameter forward passes for the built-in models: C clients' models at once.

``batched_forward(params, x)`` takes every parameter with a leading client dimension
(``W: [C, out, in]``) and inputs ``x: [C, B, *input_shape]``, and returns ``[C, B, classes]`` —
the same numbers as ``vmap(functional_call(model, ·, ·))`` but written with ``baddbmm`` and
grouped convolutions (im2col products off the CPU), whose autograd backward is 2x cheaper than
the vmap-generated graph for small models on CPU. Models without a ``batched_forward`` fall back to vmap.
"""
from __future__ import annotations

import torch
from torch import Tensor


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Per-client affine map: ``y_c = x_c W_cᵀ + b_c``; x [C, B, in], W [C, out, in]."""
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def conv2d_same(x: Tensor, weight: Tensor, bias: Tensor | None, padding: int) -> Tensor:
    """Per-client 2-D convolution: x [C, B, c_in, H, W], weight [C, c_out, c_in, k, k] ->
    [C, B, c_out, H', W'] (stride 1).

    On the CPU one grouped convolution (the C clients become C groups of channels of a single
    conv2d call); elsewhere :func:`conv2d_unfold`, because cuDNN runs a grouped convolution as
    one kernel per group — 2,000 launches a round at 100 clients x 20 steps, 42 % of a CNN
    round's CUDA time on an H200 (simulations/benchmarks/results/gpu_h200_2026-11-30.md).
    """
    if x.device.type != "cpu":
        return conv2d_unfold(x, weight, bias, padding)
    C, B, c_in, H, W = x.shape
    c_out = weight.shape[1]
    z = x.transpose(0, 1).reshape(B, C * c_in, H, W)
    z = torch.nn.functional.conv2d(z, weight.reshape(C * c_out, *weight.shape[2:]),
                                   None if bias is None else bias.reshape(C * c_out),
                                   padding=padding, groups=C)
    return z.reshape(B, C, c_out, *z.shape[2:]).transpose(0, 1)


def conv2d_unfold(x: Tensor, weight: Tensor, bias: Tensor | None, padding: int) -> Tensor:
    """:func:`conv2d_same` as one batched matrix product (im2col): the patches of every image,
    ``unfold`` -> [C, c_in·k·k, B·H'·W'], times each client's W_c [c_out, c_in·k·k], plus b_c.
    The same sums as the convolution in another order (equal to rounding; a few kernels a
    layer whatever C is, where a grouped convolution may launch one per client)."""
    C, B, c_in, H, W = x.shape
    c_out, k_h, k_w = weight.shape[1], weight.shape[3], weight.shape[4]
    cols = torch.nn.functional.unfold(x.reshape(C * B, c_in, H, W), (k_h, k_w), padding=padding)
    h_out, w_out = H + 2 * padding - k_h + 1, W + 2 * padding - k_w + 1
    L, ckk = cols.shape[-1], c_in * k_h * k_w       # sizes spelled out: B may be 0
    cols = cols.reshape(C, B, ckk, L).transpose(1, 2).reshape(C, ckk, B * L)
    w = weight.reshape(C, c_out, ckk)
    out = (torch.bmm(w, cols) if bias is None
           else torch.baddbmm(bias.unsqueeze(-1), w, cols))           # [C, c_out, B·L]
    return out.reshape(C, c_out, B, h_out, w_out).transpose(1, 2)
