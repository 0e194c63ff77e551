"""The Jacobian J = d logits / d theta of a CNN actor, built once per policy step, for the Fisher-vector products.

`autograd_linearization` computes J v by differentiating J^T u again, which for a CNN is a forward pass plus a
convolution double-backward on every conjugate-gradient iteration: on CPU that took ~2 s per product for 1,024
Atari frames. Here the part of J that passes through the convolutions, per sample and per logit, [n, A, P_conv]
(5,152 parameters for the paper's network), is materialized once, without autograd:

    d logits / d (fc output)  = W_head                                   (linear head)
    d / d (conv output)       = (W_head * relu'(z)) @ W_fc               (z = W_fc f + b_fc, f the flat conv output)
    d / d W_conv, d / d b_conv = per-sample outer products with the layer's unfolded input, after relu'
    d / d (conv input)        = the transposed convolution of the above  (to the layer below)

and the fc and head layers keep their closed form (J v = (W_fc' f + b_fc') relu'(z) W_head^T + W_head' h + b_head').
J v and J^T u are then a few matrix products, equal to autograd's to float rounding (tests/test_conv_jacobian.py
compares them in float64, and the Fisher-vector product with the Hessian of the KL). It applies to the actors it
was written for: a ConvBody (ReLU throughout) and a linear head of logits (Categorical, MultiCategorical,
Bernoulli), without a recurrent cell or action masks; `conv_linearization` returns None for any other actor, and
the caller falls back to autograd.

It reads the actor's structure only (layer names, shapes, strides), never its parameter values: theta comes in, and
nothing is written back to the actor. No config, envs or randomness.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from trpo.encoders import ConvBody
from trpo.networks import Actor
from trpo.sequences import Inputs
from trpo.trust_region import Linearization

MAX_JACOBIAN_BYTES = 1 << 30  # beyond this (the 'nature' CNN on large batches), autograd's products instead
CHUNK = 32  # samples per block while J is built: temporaries that stay in cache (2-3x faster than 256)


def conv_linearization(actor: Actor, obs: Inputs, theta: Tensor) -> Linearization | None:
    """J of `actor` at parameters `theta` (flat, in named_parameters order) on observations `obs` [n, D], as the
    two linear maps of a `Linearization`; None where this actor is not one this module handles (a recurrent
    actor's `Sequences` among them)."""
    body = actor.body
    if (not isinstance(body, ConvBody) or actor.cell is not None or actor.mask_dim or not isinstance(obs, Tensor)
            or obs.dim() != 2):
        return None
    names = [name for name, _ in actor.named_parameters()]
    convs = [m for m in body.convs if isinstance(m, nn.Conv2d)]
    conv_names = [f"body.convs.{i}.{p}" for i, m in enumerate(body.convs) if isinstance(m, nn.Conv2d)
                  for p in ("weight", "bias")]
    if names != [*conv_names, "body.fc.weight", "body.fc.bias", "head.linear.weight", "head.linear.bias"]:
        return None  # e.g. a Gaussian head with its log-std
    tensors, offset = {}, 0
    for name, p in actor.named_parameters():
        tensors[name] = theta[offset : offset + p.numel()].view(p.shape)
        offset += p.numel()
    conv_w = [(tensors[conv_names[2 * i]], tensors[conv_names[2 * i + 1]]) for i in range(len(convs))]
    w_fc, b_fc = tensors["body.fc.weight"], tensors["body.fc.bias"]
    w_head, b_head = tensors["head.linear.weight"], tensors["head.linear.bias"]
    p_conv = sum(tensors[name].numel() for name in conv_names)
    n, logits_dim, dtype = obs.shape[0], w_head.shape[0], w_fc.dtype
    if n * logits_dim * p_conv * dtype.itemsize > MAX_JACOBIAN_BYTES:
        return None

    lay = body.layout
    jac = torch.empty(n, logits_dim, p_conv, dtype=dtype, device=theta.device)
    feats, fc_masks, hidden, logits = [], [], [], []
    with torch.no_grad():
        for s in range(0, n, CHUNK):
            x = obs[s : s + CHUNK, : lay.size].reshape(-1, lay.channels, lay.height, lay.width).to(dtype)
            if lay.scale != 1.0:  # as ConvBody.forward
                x = x * lay.scale
            c = x.shape[0]
            acts, relu_grads = [x], []
            for (w, b), conv in zip(conv_w, convs, strict=True):
                pre = F.conv2d(acts[-1], w, b, conv.stride)
                relu_grads.append((pre > 0).to(dtype))
                acts.append(torch.relu(pre))
            f = acts[-1].flatten(1)
            z = torch.addmm(b_fc, f, w_fc.t())
            fc_mask = (z > 0).to(dtype)
            h = torch.relu(z)
            logits.append(torch.addmm(b_head, h, w_head.t()))
            feats.append(f)
            fc_masks.append(fc_mask)
            hidden.append(h)
            # d logits / d (last conv output), every logit at once: [c, A, F]
            d = (w_head.unsqueeze(0) * fc_mask.unsqueeze(1)) @ w_fc
            blocks: list[Tensor] = []
            for i in range(len(convs) - 1, -1, -1):
                conv, (w, _) = convs[i], conv_w[i]
                out_shape = acts[i + 1].shape[1:]
                # out=: written channels-first, whatever the layout of d (the transposed convolution's is not)
                masked = torch.empty(c, logits_dim, *out_shape, dtype=dtype, device=theta.device)
                torch.mul(d.reshape(c, logits_dim, *out_shape), relu_grads[i].unsqueeze(1), out=masked)
                d = masked.reshape(c * logits_dim, *out_shape)
                cols = _unfold(acts[i], conv.kernel_size, conv.stride)  # [c, C_in k k, P]
                grad_w = torch.bmm(d.reshape(c, logits_dim * out_shape[0], -1), cols.transpose(1, 2))
                grad_b = d.sum((-1, -2))
                blocks = [grad_w.reshape(c, logits_dim, -1), grad_b.reshape(c, logits_dim, -1), *blocks]
                if i > 0:  # to the layer below: the transposed convolution
                    below = acts[i].shape
                    pad = [below[2 + j] - ((out_shape[1 + j] - 1) * conv.stride[j] + conv.kernel_size[j])
                           for j in range(2)]
                    # channels-last: CPU's transposed convolution is 2-3x faster in that layout
                    cl = torch.channels_last
                    d = F.conv_transpose2d(d.contiguous(memory_format=cl), w.contiguous(memory_format=cl),
                                           stride=conv.stride, output_padding=pad)
            jac[s : s + c] = torch.cat(blocks, -1)
    f, fc_mask, h = torch.cat(feats), torch.cat(fc_masks), torch.cat(hidden)
    flat_jac = jac.reshape(n * logits_dim, p_conv)
    n_fc_w, n_fc_b, n_head_w = w_fc.numel(), b_fc.numel(), w_head.numel()

    def jvp(v: Tensor) -> tuple[Tensor, ...]:
        v_conv, v_fc_w, v_fc_b, v_head_w, v_head_b = torch.split(v, [p_conv, n_fc_w, n_fc_b, n_head_w,
                                                                      b_head.numel()])
        out = (flat_jac @ v_conv).view(n, logits_dim)
        dz = torch.addmm(v_fc_b, f, v_fc_w.view_as(w_fc).t()) * fc_mask
        return (out + dz @ w_head.t() + torch.addmm(v_head_b, h, v_head_w.view_as(w_head).t()),)

    def vjp(u: tuple[Tensor, ...]) -> Tensor:
        (g,) = u
        dz = (g @ w_head) * fc_mask
        return torch.cat([(g.reshape(1, -1) @ flat_jac).reshape(-1), (dz.t() @ f).reshape(-1), dz.sum(0),
                          (g.t() @ h).reshape(-1), g.sum(0)])

    return Linearization((torch.cat(logits),), jvp, vjp)


def _unfold(x: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> Tensor:
    """F.unfold(x, kernel, stride=stride) for a contiguous NCHW x without padding, as one strided copy."""
    x = x.contiguous()
    c, channels, height, width = x.shape
    rows, cols = (height - kernel[0]) // stride[0] + 1, (width - kernel[1]) // stride[1] + 1
    st = x.stride()
    view = x.as_strided((c, channels, kernel[0], kernel[1], rows, cols),
                        (st[0], st[1], st[2], st[3], stride[0] * st[2], stride[1] * st[3]))
    return view.reshape(c, channels * kernel[0] * kernel[1], rows * cols)
