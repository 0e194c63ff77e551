"""Observation encoders (the networks' bodies): an MLP for vectors, a CNN for images.

An image observation (`image_layout`: by default a uint8 or bool Box of image shape, 2-D grey or 3-D with
channels first or last, both spatial sides >= 8; TRPOConfig.obs_encoder chooses otherwise) is encoded by
`observations.ObsEncoder` as a flat vector in channels-first order, uint8 pixels kept as uint8 (a quarter of float32's
memory in batches and pipes); `ConvBody` views it as [B, C, H, W] again and scales pixels to
[0, 1]. Two CNNs: the TRPO paper's Atari network ('paper': two conv layers of 16 filters 4x4 with stride 2,
then 20 hidden units; Schulman et al. 2015, section 8) and the DQN/Nature network ('nature': 32 8x8/4,
64 4x4/2, 64 3x3/1, then 512 hidden units).

A recurrent policy or critic (TRPOConfig.recurrent) puts a `RecurrentCell` (LSTM or GRU) between the body and the
head (`CELLS`); `unroll` runs it over sequences, resetting the state where an episode starts.

Imports nothing of trpo: sizes and kinds come in as arguments, not a TRPOConfig, and it knows no action
distribution, env, optimizer or disk. Initial weights draw on torch's default generator, which the learner seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}

# (out_channels, kernel, stride) per conv layer, then the hidden layer's width.
CNNS: dict[str, tuple[list[tuple[int, int, int]], int]] = {
    "paper": ([(16, 4, 2), (16, 4, 2)], 20),
    "nature": ([(32, 8, 4), (64, 4, 2), (64, 3, 1)], 512),
}


@dataclass(frozen=True)
class ImageLayout:
    """How an image observation is stored: its shape as channels-first (C, H, W), whether the env gives channels
    last, and the pixel scale (1/255 for uint8)."""

    channels: int
    height: int
    width: int
    channels_last: bool
    scale: float

    @property
    def size(self) -> int:
        return self.channels * self.height * self.width

    @property
    def dtype(self) -> type[np.generic]:
        """How encoded observations are stored: uint8 pixels as they are (scaled in `ConvBody`), else float32."""
        return np.uint8 if self.scale != 1.0 else np.float32

    def encode(self, obs: np.ndarray) -> np.ndarray:
        """A batch [B, *space shape] as [B, C*H*W] of `dtype`, channels first, not yet scaled."""
        arr = np.asarray(obs, dtype=self.dtype)
        if self.channels_last:  # [B, H, W] (grey) or [B, H, W, C] -> [B, C, H, W]
            arr = arr.reshape(arr.shape[0], self.height, self.width, -1).transpose(0, 3, 1, 2)
        return np.ascontiguousarray(arr).reshape(arr.shape[0], -1)


def image_layout(space: spaces.Space, obs_encoder: str = "auto") -> ImageLayout | None:
    """The layout of an image observation space, or None for observations the MLP takes (TRPOConfig.obs_encoder).
    Image-shaped: a 2-D Box, or a 3-D one, both spatial sides >= 8; 3-D shapes are channels-first when the first
    side is the smallest (e.g. stacked frames, 4 x 84 x 84), else channels-last (Gymnasium's H x W x C).
    'auto' takes image-shaped Boxes of pixels (uint8) or binary channels (bool, e.g. MinAtar) as images: a float
    Box of that shape is as often a grid of features or stacked vectors (LunarLander's 8 x 8 when 8 frames are
    stacked), so it goes to the MLP unless obs_encoder 'cnn' says otherwise. 'mlp': never an image."""
    if obs_encoder == "mlp":
        return None
    shape = space.shape if isinstance(space, spaces.Box) else ()
    if len(shape) == 2:
        channels, (height, width), last = 1, shape, True
    elif len(shape) == 3 and shape[0] < min(shape[1], shape[2]):
        channels, height, width, last = shape[0], shape[1], shape[2], False
    elif len(shape) == 3:
        height, width, channels, last = shape[0], shape[1], shape[2], True
    else:
        height = width = channels = 0
    if min(height, width) < 8:
        if obs_encoder == "cnn":
            raise ValueError(f"obs_encoder 'cnn' needs image observations (a Box of 2 or 3 dims with both spatial "
                             f"sides >= 8), not {space}")
        return None
    if obs_encoder == "auto" and space.dtype not in (np.uint8, np.bool_):
        return None
    scale = 1.0 / 255.0 if space.dtype == np.uint8 else 1.0
    return ImageLayout(int(channels), int(height), int(width), last, scale)


class MLPBody(nn.Sequential):
    """Hidden layers only, orthogonally initialized with gain sqrt(2)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], activation: str) -> None:
        layers: list[nn.Module] = []
        for size in hidden:
            linear = nn.Linear(in_dim, size)
            nn.init.orthogonal_(linear.weight, gain=math.sqrt(2))
            nn.init.zeros_(linear.bias)
            layers += [linear, _ACTIVATIONS[activation]()]
            in_dim = size
        super().__init__(*layers)
        self.out_dim = in_dim


class ConvBody(nn.Module):
    """One of CNNS on the image part of the observation vector (an action mask after it is left to the actor),
    then its hidden layer; ReLU throughout, orthogonal init with gain sqrt(2)."""

    def __init__(self, layout: ImageLayout, kind: str) -> None:
        super().__init__()
        self.layout = layout
        convs, hidden = CNNS[kind]
        layers: list[nn.Module] = []
        channels, side = layout.channels, (layout.height, layout.width)
        for out, kernel, stride in convs:
            side = ((side[0] - kernel) // stride + 1, (side[1] - kernel) // stride + 1)
            if min(side) < 1:
                raise ValueError(f"image_encoder '{kind}' needs larger images than {layout.height}x{layout.width}")
            layers += [nn.Conv2d(channels, out, kernel, stride), nn.ReLU()]
            channels = out
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Linear(channels * side[0] * side[1], hidden)
        for m in [*self.convs, self.fc]:
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.orthogonal_(m.weight, gain=math.sqrt(2))
                if m.bias is not None:  # always, as built above
                    nn.init.zeros_(m.bias)
        self.out_dim = hidden

    def forward(self, obs: Tensor) -> Tensor:
        lay = self.layout
        x = obs[..., : lay.size].reshape(-1, lay.channels, lay.height, lay.width).to(self.fc.weight.dtype)
        if lay.scale != 1.0:  # uint8 pixels to [0, 1]
            x = x * lay.scale
        return torch.relu(self.fc(self.convs(x).flatten(1))).reshape(*obs.shape[:-1], -1)  # leading dims kept


class RecurrentCell(nn.Module):
    """One step of a recurrent cell, its equations written out (the kinds below) rather than torch's fused kernels:
    the Fisher-vector product differentiates through time twice, which cuDNN's fused LSTM cannot (it has no double
    backward), and the same code runs on every device. A kind is a subclass with its gate count, its state size and
    `step_saving` (or `step`), plus its line in CELLS (and the `recurrent` choice in config.py); its `step_backward`
    is optional (the critic's fit goes through autograd without it). The state is one tensor [B, state_dim]."""

    gates: int  # blocks of `hidden` rows in W and U

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = self.out_dim = hidden
        self.input = nn.Linear(in_dim, self.gates * hidden)  # W x + b, for a whole sequence at once in `unroll`
        self.recur = nn.Linear(hidden, self.gates * hidden)  # U h + b'
        for linear in (self.input, self.recur):
            nn.init.orthogonal_(linear.weight, gain=1.0)
            nn.init.zeros_(linear.bias)

    @property
    def state_dim(self) -> int:
        return self.hidden

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> Tensor:
        return torch.zeros(batch, self.state_dim, device=device, dtype=self.input.weight.dtype)

    def forward(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """(output h', new state) from inputs [B, in_dim] and the state [B, state_dim]."""
        return self.step(self.input(x), state)

    def step(self, wx: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """`forward` from the inputs' projection wx = W x + b (`unroll` projects a whole sequence at once)."""
        out, new_state, _ = self.step_saving(wx, state)
        return out, new_state

    def step_saving(self, wx: Tensor, state: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """`step`, and what `step_backward` needs of it."""
        raise NotImplementedError

    def step_backward(self, saved: tuple[Tensor, ...], d_out: Tensor,
                      d_new_state: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The step's backward pass written out (for the critic's fit, `unroll_backward`): from the gradients of its
        output and of its new state (None at a sequence's last step), the gradients of wx, of U h + b' (the recur
        layer's output), that layer's input, and the gradient of the state the step started from. The kernels
        and their order are autograd's, so the gradients are autograd's bit for bit (tested)."""
        raise NotImplementedError


class LSTMCell(RecurrentCell):
    """i, f, g, o = W x + U h + b;  c' = sigma(f) c + sigma(i) tanh(g);  h' = sigma(o) tanh(c').  State (h, c)."""

    gates = 4

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__(in_dim, hidden)
        nn.init.ones_(self.input.bias[hidden : 2 * hidden])  # forget-gate bias 1 (Jozefowicz et al. 2015)

    @property
    def state_dim(self) -> int:
        return 2 * self.hidden

    def step_saving(self, wx: Tensor, state: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        h_prev, c_prev = state[..., : self.hidden], state[..., self.hidden :]
        i, f, g, o = (wx + self.recur(h_prev)).chunk(4, -1)
        si, sf, tg, so = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = sf * c_prev + si * tg
        tc = torch.tanh(c)
        h = so * tc
        return h, torch.cat([h, c], -1), (h_prev, c_prev, si, sf, tg, so, tc)

    def step_backward(self, saved: tuple[Tensor, ...], d_out: Tensor,
                      d_new_state: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        h_prev, c_prev, si, sf, tg, so, tc = saved
        dh, dc = d_out, None
        if d_new_state is not None:
            dh, dc = dh + d_new_state[..., : self.hidden], d_new_state[..., self.hidden :]
        d_o = torch.ops.aten.sigmoid_backward(dh * tc, so)
        d_tc = torch.ops.aten.tanh_backward(dh * so, tc)
        dc = d_tc if dc is None else dc + d_tc
        d_i = torch.ops.aten.sigmoid_backward(dc * tg, si)
        d_f = torch.ops.aten.sigmoid_backward(dc * c_prev, sf)
        d_g = torch.ops.aten.tanh_backward(dc * si, tg)
        d_pre = torch.cat([d_i, d_f, d_g, d_o], -1)
        d_state = torch.cat([d_pre.mm(self.recur.weight), dc * sf], -1)
        return d_pre, d_pre, h_prev, d_state


class GRUCell(RecurrentCell):
    """r = sigma(W_r x + U_r h + b_r);  z = sigma(W_z x + U_z h + b_z);  n = tanh(W_n x + b_n + r (U_n h + c_n));
    h' = (1 - z) n + z h.  State h."""

    gates = 3

    def step_saving(self, wx: Tensor, state: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        xr, xz, xn = wx.chunk(3, -1)
        hr, hz, hn = self.recur(state).chunk(3, -1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        omz, n = 1 - z, torch.tanh(xn + r * hn)
        h = omz * n + z * state
        return h, h, (state, hn, r, z, omz, n)

    def step_backward(self, saved: tuple[Tensor, ...], d_out: Tensor,
                      d_new_state: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        state, hn, r, z, omz, n = saved
        dh = d_out if d_new_state is None else d_out + d_new_state
        d_n = torch.ops.aten.tanh_backward(dh * omz, n)
        d_z = torch.ops.aten.sigmoid_backward(-(dh * n) + dh * state, z)
        d_r = torch.ops.aten.sigmoid_backward(d_n * hn, r)
        d_recur = torch.cat([d_r, d_z, d_n * r], -1)
        return torch.cat([d_r, d_z, d_n], -1), d_recur, state, d_recur.mm(self.recur.weight) + dh * z


# TRPOConfig.recurrent -> the cell; a new kind: a RecurrentCell subclass, a line here, its name in config.Recurrent.
CELLS: dict[str, type[RecurrentCell]] = {"lstm": LSTMCell, "gru": GRUCell}


def make_cell(kind: str, in_dim: int, hidden: int) -> RecurrentCell | None:
    """The cell of `recurrent` kind after a body of in_dim outputs (None for 'none')."""
    if kind == "none":
        return None
    if kind not in CELLS:
        raise ValueError(f"recurrent must be 'none' or one of {', '.join(CELLS)}, got {kind!r}")
    return CELLS[kind](in_dim, hidden)


def unroll(cell: RecurrentCell, x: Tensor, state: Tensor, starts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Run `cell` over sequences x [L, S, F] from the states [S, state_dim], the state set to zero before every step
    whose `starts` [L, S] is True (an episode begins there: nothing leaks from the episode before, not even a
    gradient). Returns the outputs [L, S, H], the state each step started from (after the reset) [L, S, state_dim],
    and the state after each step [L, S, state_dim]."""
    keep = (~starts).unsqueeze(-1).to(state.dtype)
    wx = cell.input(x)  # the inputs' part of every step in one matmul; only the recurrent part is sequential
    outs, before, after = [], [], []
    for t in range(x.shape[0]):
        state = state * keep[t]
        before.append(state)
        out, state = cell.step(wx[t], state)
        outs.append(out)
        after.append(state)
    return torch.stack(outs), torch.stack(before), torch.stack(after)


def unroll_saving(cell: RecurrentCell, wx: Tensor, state: Tensor,
                  keep: Tensor) -> tuple[Tensor, list[tuple[Tensor, ...]]]:
    """`unroll`'s outputs [L, S, H] from the inputs' projections wx [L, S, gates * H] (no autograd), and what
    `unroll_backward` needs: the same kernels in the same order as `unroll`, so the same values bit for bit."""
    outs, saved = [], []
    for t in range(wx.shape[0]):
        state = state * keep[t]
        out, state, step_saved = cell.step_saving(wx[t], state)
        outs.append(out)
        saved.append(step_saved)
    return torch.stack(outs), saved


def unroll_backward(cell: RecurrentCell, saved: list[tuple[Tensor, ...]], keep: Tensor,
                    d_outs: Tensor) -> Tensor:
    """Backpropagation through time written out: from the gradients of the outputs d_outs [L, S, H], set the recur
    layer's .grad (summed over steps from the last, in autograd's order) and return the gradient of wx [L, S, gates
    * H]. The state the sequences started from is data (the rollout's), so no gradient goes to it."""
    d_wx, d_state = [], None
    weight = bias = None
    for t in range(d_outs.shape[0] - 1, -1, -1):
        d_x, d_recur, recur_input, d_state = cell.step_backward(saved[t], d_outs[t], d_state)
        d_state = d_state * keep[t]
        d_weight, d_bias = d_recur.t().mm(recur_input), d_recur.sum(0)
        weight = d_weight if weight is None else weight + d_weight
        bias = d_bias if bias is None else bias + d_bias
        d_wx.append(d_x)
    cell.recur.weight.grad, cell.recur.bias.grad = weight, bias
    return torch.stack(d_wx[::-1])


def make_body(in_dim: int, hidden: Sequence[int], activation: str, image: ImageLayout | None,
              image_encoder: str) -> MLPBody | ConvBody:
    """The body for an observation: a CNN for images, else an MLP."""
    return ConvBody(image, image_encoder) if image is not None else MLPBody(in_dim, hidden, activation)
