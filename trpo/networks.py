"""Actor (policy pi_theta) and critic (value V_phi) as separate modules with separate parameter groups."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from trpo.config import ConfigError
from trpo.encoders import ConvBody, ImageLayout, make_body
from trpo.spaces import ActionDistribution, Params, apply_mask


class Actor(nn.Module):
    """pi_theta(a|s): a body (encoders.py: an MLP, or a CNN for images) and the distribution family's head,
    returning distribution params. With
    `mask_dim` > 0 the observation vector ends with the action mask (spaces.ObsEncoder), and masked logits are
    set to MASKED_LOGIT here, so that sampling, log-probabilities, KL, entropy and the Fisher metric are all those
    of the masked policy."""

    def __init__(self, obs_dim: int, dist: ActionDistribution, hidden: Sequence[int], activation: str,
                 init_log_std: float, mask_dim: int = 0, image: ImageLayout | None = None,
                 image_encoder: str = "paper") -> None:
        super().__init__()
        self.activation = activation
        self.mask_dim = mask_dim
        self.body = make_body(obs_dim, hidden, activation, image, image_encoder)
        self.head = dist.make_head(self.body.out_dim, init_log_std)

    def forward(self, obs: Tensor) -> Params:
        params = self.head(self.body(obs))
        if self.mask_dim:
            params = (apply_mask(params[0], obs[..., -self.mask_dim:]), *params[1:])
        return params

    def rollout_policy(self) -> RolloutPolicy:
        """A frozen CPU copy of this actor's head output (params[0]) for per-step inference in rollouts: numpy
        matmuls for an MLP, the torch modules for a CNN."""
        if isinstance(self.body, ConvBody):
            return TorchPolicy(self)
        linears = [m for m in self.body if isinstance(m, nn.Linear)]
        as_np = lambda t: t.detach().cpu().numpy().copy()  # noqa: E731
        layers = [(as_np(m.weight).T.copy(), as_np(m.bias)) for m in [*linears, self.head.linear]]
        return NumpyPolicy(layers, self.activation, self.mask_dim)


class NumpyPolicy:
    """The actor's MLP up to params[0] (logits or the Gaussian mean) as float32 numpy matmuls: a few
    microseconds per step for a handful of envs, where a torch forward costs tens. Picklable, so worker
    processes receive it once per batch. The rest of params (a Gaussian's log-std) depends on no state: rollouts
    fold it into the batch's noise (`ActionDistribution.shift`)."""

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]], activation: str, mask_dim: int = 0):
        self.layers = layers
        self.activation = activation
        self.mask_dim = mask_dim

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        # einsum without BLAS computes every row the same way whatever the number of rows (BLAS does not), so
        # envs split over worker processes get bit-identical actions to envs stepped together.
        h = obs
        for w, b in self.layers[:-1]:
            h = np.einsum("ij,jk->ik", h, w) + b
            h = np.tanh(h) if self.activation == "tanh" else np.maximum(h, 0.0)
        w, b = self.layers[-1]
        out = np.einsum("ij,jk->ik", h, w) + b
        return apply_mask(out, obs[:, -self.mask_dim:]) if self.mask_dim else out


class TorchPolicy:
    """The actor's params[0] for rollouts when its body is a CNN: a CPU copy of the modules, run one observation
    at a time so that every env's action is computed the same way however envs are split over processes
    (batched convolutions may differ in the last bits). Picklable."""

    def __init__(self, actor: Actor) -> None:
        self.actor = copy.deepcopy(actor).cpu().requires_grad_(False)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            rows = [self.actor(torch.from_numpy(np.ascontiguousarray(obs[i : i + 1])))[0] for i in range(len(obs))]
        return torch.cat(rows).numpy()


class Critic(nn.Module):
    """V_phi(s): a body (an MLP, or a CNN for images) with a scalar output."""

    def __init__(self, obs_dim: int, hidden: Sequence[int], activation: str, image: ImageLayout | None = None,
                 image_encoder: str = "paper") -> None:
        super().__init__()
        self.activation = activation
        self.body = make_body(obs_dim, hidden, activation, image, image_encoder)
        self.out = nn.Linear(self.body.out_dim, 1)
        nn.init.orthogonal_(self.out.weight, gain=1.0)
        nn.init.zeros_(self.out.bias)

    def forward(self, obs: Tensor) -> Tensor:
        return self.out(self.body(obs)).squeeze(-1)

    def mse_backward(self, obs: Tensor, targets: Tensor) -> None:
        """Set each parameter's .grad to the gradient of mean((V(obs) - targets)^2). For an MLP the backward
        pass is written out: it runs the kernels autograd runs, so the gradients are autograd's bit for bit
        (tested), at about a third of the overhead for a minibatch of 128 (the value fit takes hundreds of these
        per update). A CNN goes through autograd."""
        if isinstance(self.body, ConvBody):
            for p in self.parameters():
                p.grad = None
            (self(obs) - targets).pow(2).mean().backward()
            return
        with torch.no_grad():
            self._mlp_mse_backward(obs, targets)

    def _mlp_mse_backward(self, obs: Tensor, targets: Tensor) -> None:
        linears = [m for m in self.body if isinstance(m, nn.Linear)] + [self.out]
        layer_inputs = [obs]
        for linear in linears[:-1]:
            pre = torch.addmm(linear.bias, layer_inputs[-1], linear.weight.t())
            layer_inputs.append(torch.tanh(pre) if self.activation == "tanh" else torch.relu(pre))
        values = torch.addmm(self.out.bias, layer_inputs[-1], self.out.weight.t())
        grad = (values - targets.unsqueeze(-1)) * (2.0 / obs.shape[0])  # d loss / d V, [B, 1]
        for i in range(len(linears) - 1, -1, -1):
            linear, x = linears[i], layer_inputs[i]
            linear.weight.grad, linear.bias.grad = grad.t() @ x, grad.sum(0)
            if i > 0:  # back through the activation that produced x
                grad = grad @ linear.weight
                grad = (torch.ops.aten.tanh_backward(grad, x) if self.activation == "tanh"
                        else torch.ops.aten.threshold_backward(grad, x, 0))


def check_device(device: torch.device) -> None:
    """A clear ConfigError for a device this machine does not have (torch would fail later, deep in a step)."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(device)!r} requested but this machine has {torch.cuda.device_count()} "
                              "CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {str(device)!r} requested but MPS is not available on this machine")


RolloutPolicy = NumpyPolicy | TorchPolicy  # what rollouts call: normalized observations [k, D] -> params[0]
