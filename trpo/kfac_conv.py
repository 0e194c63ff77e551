"""A Conv2d layer's part of K-FAC (kfac.py): its input factor A from the patches its weight sees, and a backward pass
through it by matrix products where the convolution sees its whole input at once.

    patches    abar_it = [x_i cut at output position t, flattened (C_in, kh, kw), 1]   (one strided copy per chunk)
    A          sum_i sum_t abar_it abar_it^T, as [[X^T X, X^T 1], [1^T X, n T]] (no column of ones is built)

A convolution whose kernel covers its zero-padding-free input (one output position, the paper CNN's second layer)
is a Linear on the flattened input: its patches are the input itself, and its backward is three matrix products,
s = W x + b gives dL/dx = dL/ds W, dL/dW = dL/ds^T x, dL/db = sum dL/ds. On one CPU thread that backward takes a
few percent of the time of oneDNN's kernel for the same shapes (measured on the paper CNN, 1,024 MinAtar frames:
0.1 ms against 3 ms), and K-FAC backpropagates through it once per output of the action distribution. Any other
convolution keeps the convolution_backward kernel autograd itself calls.

`ConvOutput` wraps the output the module already computed (the forward values are the module's own, bit for bit) and
only replaces the backward. It reads the module's weight and hyperparameters; it writes nothing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

CHUNK = 256  # samples per block while a convolution's patches are cut out for A (memory stays ~ CHUNK patches)
PATCH_LIMIT = 1 << 24  # elements: patches up to this size are cut once per forward pass and kept (for A and dL/dW)


def plain(conv: nn.Conv2d) -> bool:
    """Whether K-FAC has a block for `conv`: ungrouped, padded (if at all) with zeros given as numbers."""
    return conv.groups == 1 and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def covers_input(conv: nn.Conv2d, x: Tensor) -> bool:
    """Whether `conv` sees its whole input [n, C, H, W] at its one output position (no padding, no dilation)."""
    return (tuple(conv.kernel_size) == tuple(x.shape[-2:]) and tuple(conv.padding) == (0, 0)  # type: ignore[arg-type]
            and tuple(conv.dilation) == (1, 1))


def moment(x: Tensor, bias: bool) -> Tensor:
    """sum_i abar_i abar_i^T over the rows of x [N, K], abar = [x, 1] (without the 1 for a layer without bias)."""
    xtx = x.t() @ x
    if not bias:
        return xtx
    s = x.sum(0, keepdim=True)
    corner = torch.full((1, 1), float(x.shape[0]), dtype=x.dtype, device=x.device)
    return torch.cat([torch.cat([xtx, s.t()], 1), torch.cat([s, corner], 1)], 0)


def patches(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """The patches of x [n, C, H, W] the weight sees, [n T, C kh kw] (sample-major, positions row by row): the columns
    of F.unfold, read from a strided view of x in one copy."""
    assert not isinstance(conv.padding, str)  # `plain`
    ph, pw = conv.padding
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    view = x.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)[..., ::dh, ::dw]  # [n, C, oh, ow, k, k]
    return view.permute(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * kh * kw)


def kept_patches(conv: nn.Conv2d, x: Tensor) -> Tensor | None:
    """`patches(conv, x)` where they are small enough to keep (PATCH_LIMIT; x itself where the kernel covers it),
    else None."""
    if covers_input(conv, x):
        return x.reshape(x.shape[0], -1)
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    assert not isinstance(conv.padding, str)  # `plain`
    oh = (x.shape[2] + 2 * conv.padding[0] - dh * (kh - 1) - 1) // sh + 1
    ow = (x.shape[3] + 2 * conv.padding[1] - dw * (kw - 1) - 1) // sw + 1
    return patches(conv, x) if x.shape[0] * oh * ow * x.shape[1] * kh * kw <= PATCH_LIMIT else None


def conv_input_moment(conv: nn.Conv2d, x: Tensor, cols: Tensor | None = None) -> Tensor:
    """sum_i sum_t abar_it abar_it^T over the patches abar_it = [patch_it, 1] the convolution's weight sees (`cols`,
    if kept: `kept_patches`)."""
    bias = conv.bias is not None
    if cols is not None:
        return moment(cols, bias)
    total = None
    for s in range(0, x.shape[0], CHUNK):
        part = moment(patches(conv, x[s : s + CHUNK]), bias)
        total = part if total is None else total + part
    assert total is not None
    return total


class ConvOutput(torch.autograd.Function):
    """out = conv(x) as the module computed it, with the backward above: dL/dW = dL/ds^T patches from the kept
    patches `cols` [n T, K] (None: not kept), dL/dx by a matrix product where the kernel covers the input, and what
    remains by aten's convolution_backward (autograd's own kernel). First-order only."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, out: Tensor,  # type: ignore[override]
                conv: nn.Conv2d, cols: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight, cols)
        ctx.conv, ctx.bias = conv, bias is not None
        return out.view_as(out)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight, cols = ctx.saved_tensors
        conv: nn.Conv2d = ctx.conv
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        c_out = weight.shape[0]
        gx = gw = None
        gb = grad.sum((0, 2, 3)) if need_b and ctx.bias else None
        if need_w and cols is not None:  # [C_out, n T] (sample-major, as the patches) times [n T, K]
            gw = (grad.flatten(2).transpose(0, 1).reshape(c_out, -1) @ cols).view_as(weight)
        if need_x and covers_input(conv, x):
            gx = (grad.reshape(grad.shape[0], c_out) @ weight.reshape(c_out, -1)).view_as(x)
        rest_x, rest_w = need_x and gx is None, need_w and gw is None
        if rest_x or rest_w:
            ax, aw, _ = torch.ops.aten.convolution_backward(grad, x, weight, None, conv.stride, conv.padding,
                                                             conv.dilation, False, [0, 0], conv.groups,
                                                             [rest_x, rest_w, False])
            gx, gw = ax if rest_x else gx, aw if rest_w else gw
        return gx, gw, gb, None, None, None
