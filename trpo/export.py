"""A trained policy as one self-contained file, TorchScript or ONNX, for deployment without trpo.

The exported module maps what the env gives to what the env takes, deterministically:

    action = policy(obs)                          # obs [B, *observation shape], as the env returns it
    action = policy(obs_a, obs_b)                 # a Dict observation: one input per entry (`obs.a`, `obs.b`)
    action = policy(obs, mask)                    # an env that masks its actions through info["action_mask"]
    action, state = policy(obs, state)            # a recurrent policy: state [B, state_dim], zeros at an episode start

Inside: the observation flattened (images channels first, pixels scaled by the CNN), normalized with the run's
frozen statistics and clipped, the actor, the most likely action (argmax per sub-action, + the space's start; a
MultiBinary's logits > 0; a Gaussian's mean clipped to the Box bounds, in the space's dtype). Its actions equal
`agent.predict(obs, deterministic=True)` (tested on 1,000 observations): exactly with TorchScript, and with ONNX
through onnxruntime exactly for discrete actions and to float32 rounding for continuous ones (its matrix products
round otherwise than torch's).

Observations: every space the agent takes. A Box (vectors and images) or a Discrete (its integer; one-hot inside,
so a value outside the space gives a row of zeros where `predict` raises) is the input `obs`; a Dict gives one
input per entry, in the space's order, named `obs.KEY` (nested Dicts `obs.KEY.SUBKEY`); an "action_mask" entry of
a Dict observation is not an observation input but the `mask`.

It takes the agent as a plain object (its encoder, distribution, actor and observation statistics) and imports
neither trpo.agent nor loading or the run directory; the agent's weights and statistics stay as they are (the actor
is deep-copied), and the only file it writes is the one at `path`.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from trpo.distributions import Bernoulli, Categorical, DiagGaussian, MultiCategorical
from trpo.errors import ExportError as ExportError  # defined there; importable here too
from trpo.extras import install_hint

FORMATS = ("torchscript", "onnx")


class DeployedPolicy(nn.Module):
    """obs (+ mask) (+ state) -> the deterministic env action (+ the next state); see the module docstring."""

    # Buffers (register_buffer): the frozen observation statistics, and a Box action space's bounds.
    mean: Tensor
    inv_std: Tensor
    low: Tensor
    high: Tensor

    def __init__(self, agent: Any) -> None:
        super().__init__()
        encoder, dist = agent.encoder, agent.dist
        # One input per observation leaf: "obs", or "obs.KEY" per entry of a Dict (nested keys joined by dots).
        self.leaves = _leaves(encoder.features)
        self.obs_space = self.leaves[0][1]
        self.names = [name for name, _ in self.leaves]
        self.discrete = [(int(sp.start), int(sp.n)) if isinstance(sp, spaces.Discrete) else None
                         for _, sp in self.leaves]
        self.actor = copy.deepcopy(agent.actor).cpu().eval().requires_grad_(False)
        self.obs_shape = tuple(self.obs_space.shape or ())
        layout = encoder.image
        self.channels_last = bool(layout is not None and layout.channels_last)
        self.image_dtype = layout is not None and layout.dtype == np.uint8
        self.mask_dim = encoder.mask_dim
        self.recurrent = self.actor.cell is not None
        frozen = agent.obs_norm.frozen()
        self.normalize = frozen.mean is not None
        self.register_buffer("mean", torch.as_tensor(frozen.mean if self.normalize else np.zeros(1, np.float32)))
        self.register_buffer("inv_std", torch.as_tensor(frozen.inv_std if self.normalize else np.ones(1, np.float32)))
        self.clip = float(frozen.clip)
        self.multi = isinstance(dist, MultiCategorical)
        if isinstance(dist, Categorical):
            self.kind, self.bounds, self.starts = "categorical", [0, dist.n], [dist.start]
        elif isinstance(dist, MultiCategorical):
            self.kind, self.bounds, self.starts = "categorical", list(dist.bounds), [int(s) for s in dist.start]
        elif isinstance(dist, Bernoulli):
            self.kind = "bernoulli"
        else:
            assert isinstance(dist, DiagGaussian)
            self.kind = "gaussian"
            self.register_buffer("low", torch.as_tensor(dist.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(dist.high, dtype=torch.float32))
            self.action_dtype = torch.from_numpy(np.zeros(0, dist.dtype)).dtype
        self.action_shape = tuple(getattr(dist, "shape", ()))

    def _encode(self, leaves: tuple[Tensor, ...], mask: Tensor | None) -> Tensor:
        parts = []
        for x, discrete in zip(leaves, self.discrete, strict=True):
            if discrete is not None:  # one-hot, as ObsEncoder (a value outside the space: a row of zeros)
                start, n = discrete
                parts.append((x.reshape(-1, 1).to(torch.int64) - start == torch.arange(n)).to(torch.float32))
                continue
            if self.channels_last:  # [B, H, W] or [B, H, W, C] -> channels first, as ObsEncoder stores images
                x = x.reshape(x.shape[0], self.obs_shape[0], self.obs_shape[1], -1).permute(0, 3, 1, 2)
            x = x.reshape(x.shape[0], -1)
            parts.append(x.to(torch.uint8) if self.image_dtype else x.to(torch.float32))
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if mask is not None:
            x = torch.cat([x, (mask != 0).to(x.dtype)], dim=1)
        if self.normalize:
            x = torch.minimum(torch.maximum((x - self.mean) * self.inv_std, torch.tensor(-self.clip)),
                              torch.tensor(self.clip))
        return x

    def _action(self, head: Tensor) -> Tensor:
        if self.kind == "categorical":
            picks = [head[:, lo:hi].argmax(-1) + start
                     for lo, hi, start in zip(self.bounds[:-1], self.bounds[1:], self.starts, strict=True)]
            return torch.stack(picks, -1) if self.multi else picks[0]
        if self.kind == "bernoulli":
            return (head > 0).to(torch.int8).reshape(head.shape[0], *self.action_shape)
        action = torch.minimum(torch.maximum(head, self.low), self.high)
        return action.reshape(head.shape[0], *self.action_shape).to(self.action_dtype)

    def forward(self, obs: Tensor, *extra: Tensor) -> Any:
        leaves, extra = (obs, *extra[: len(self.leaves) - 1]), extra[len(self.leaves) - 1 :]
        mask = extra[0] if self.mask_dim else None
        x = self._encode(leaves, mask)
        if self.recurrent:
            params, _, state = self.actor.step(x, extra[-1])
            return self._action(params[0]), state
        return self._action(self.actor(x)[0])


def _leaves(space: spaces.Space, name: str = "obs") -> list[tuple[str, spaces.Space]]:
    """The observation's parts in ObsEncoder's order, each with its input name."""
    if isinstance(space, spaces.Dict):
        return [leaf for key, sub in space.spaces.items() for leaf in _leaves(sub, f"{name}.{key}")]
    return [(name, space)]


def example_inputs(module: DeployedPolicy, batch: int = 2) -> tuple[Tensor, ...]:
    """Inputs of the right shapes and dtypes for `module`: observations sampled from its space."""
    inputs = [torch.as_tensor(np.stack([space.sample() for _ in range(batch)])) for _, space in module.leaves]
    if module.mask_dim:
        inputs.append(torch.ones(batch, module.mask_dim))
    if module.recurrent:
        inputs.append(torch.zeros(batch, module.actor.cell.state_dim))
    return tuple(inputs)


def export(agent: Any, path: str | Path, fmt: str) -> Path:
    """Write the agent's policy to `path` as `fmt` ('torchscript' or 'onnx')."""
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    module = DeployedPolicy(agent).eval()
    inputs = example_inputs(module)
    names = [*module.names, *(["mask"] if module.mask_dim else []), *(["state"] if module.recurrent else [])]
    outputs = ["action", *(["next_state"] if module.recurrent else [])]
    path = Path(path)
    with warnings.catch_warnings():  # torch's exporters warn about their own deprecations and internals
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            # Into memory, then the file: torch's own writer says a missing directory or a directory there in a
            # C++ RuntimeError; open() says it as the OSError the CLI puts in one line.
            buffer = io.BytesIO()
            torch.jit.save(torch.jit.trace(module, inputs, check_trace=False), buffer)
            path.write_bytes(buffer.getvalue())
        else:
            _onnx(module, inputs, names, outputs, path)
    return path


def _onnx(module: nn.Module, inputs: tuple[Tensor, ...], names: list[str], outputs: list[str], path: Path) -> None:
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as exc:
        raise ExportError(f"ONNX export needs the onnx and onnxscript packages: {install_hint('export')}") from exc
    batch = torch.export.Dim("batch")
    # The batch dimension of every input is free; torch.export takes forward(obs, *extra)'s extras as one tuple.
    extras = tuple({0: batch} for _ in inputs[1:])
    dynamic: tuple[Any, ...] = ({0: batch}, extras) if extras else ({0: batch},)
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)  # not the exporter's notes on optional packages (torchvision)
    try:
        program = torch.onnx.export(module, inputs, input_names=names, output_names=outputs, dynamic_shapes=dynamic,
                                    dynamo=True, verbose=False)
    finally:
        logger.setLevel(level)
    assert program is not None  # dynamo=True returns the ONNXProgram
    program.save(str(path))
