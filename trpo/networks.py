"""Actor (policy pi_theta) and critic (value V_phi) as separate modules with separate parameter groups.

Sizes and kinds come in as arguments, not a TRPOConfig (of trpo.config only ConfigError, for `check_device`); no env,
optimizer or update rule: `mse_backward` sets .grad and the caller steps. Initial weights draw on torch's default
generator, which the learner seeds."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from trpo.distributions import ActionDistribution, Params, apply_mask
from trpo.encoders import (
    ConvBody,
    ImageLayout,
    MLPBody,
    RecurrentCell,
    make_body,
    make_cell,
    unroll,
    unroll_backward,
    unroll_saving,
)
from trpo.errors import ConfigError
from trpo.objectives import shared_value_loss
from trpo.sequences import Inputs, Sequences


def _features(body: nn.Module, cell: RecurrentCell | None, inputs: Inputs) -> tuple[Tensor, Tensor]:
    """What a network's head takes, and the observations of those rows: for `Sequences`, the cell unrolled over
    them (their valid steps, in flat order); for flat observations, the body (and a recurrent cell's first step,
    from the zero state)."""
    if isinstance(inputs, Sequences):
        assert cell is not None, "sequences are for recurrent networks"
        return unroll(cell, body(inputs.obs), inputs.state, inputs.starts)[0][inputs.valid], inputs.obs[inputs.valid]
    features = body(inputs)
    if cell is not None:
        features = cell(features, cell.initial_state(features.shape[0], features.device))[0]
    return features, inputs


class Actor(nn.Module):
    """pi_theta(a|s): a body (encoders.py: an MLP, or a CNN for images), with `recurrent` an LSTM or GRU cell after
    it, and the distribution family's head, returning distribution params. With `mask_dim` > 0 the observation
    vector ends with the action mask (observations.ObsEncoder), and masked logits are set to MASKED_LOGIT here, so that
    sampling, log-probabilities, KL, entropy and the Fisher metric are all those of the masked policy.

    `actor(obs)` takes flat observations [B, D] (a recurrent actor: the first step of an episode, from the zero
    state) or `Sequences` (the params of their valid steps, in their flat order); `step` is one step of acting."""

    def __init__(self, obs_dim: int, dist: ActionDistribution, hidden: Sequence[int], activation: str,
                 init_log_std: float, mask_dim: int = 0, image: ImageLayout | None = None,
                 image_encoder: str = "paper", recurrent: str = "none", recurrent_hidden: int = 64) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.activation = activation
        self.mask_dim = mask_dim
        self.body = make_body(obs_dim, hidden, activation, image, image_encoder)
        self.cell = make_cell(recurrent, self.body.out_dim, recurrent_hidden)
        self.head = dist.make_head(self.body.out_dim if self.cell is None else self.cell.out_dim, init_log_std)
        # The shape of one sample's noise (ActionDistribution.noise): a head output's, or gSDE's matrix (SDEHead).
        self.noise_shape: tuple[int, ...] = getattr(self.head, "noise_shape", (dist.head_dim,))

    @property
    def kind(self) -> str:
        """Which acting implementation serves this actor (policy.ACTING)."""
        return "recurrent" if self.cell is not None else "cnn" if isinstance(self.body, ConvBody) else "mlp"

    def forward(self, inputs: Inputs) -> Params:
        return self._params(*_features(self.body, self.cell, inputs))

    def step(self, obs: Tensor, state: Tensor | None) -> tuple[Params, Tensor, Tensor | None]:
        """One step of acting: params for observations [B, D] and the state [B, state_dim] they follow (already reset
        where an episode starts; None for a feed-forward actor), the features the head saw, and the new state."""
        features = self.body(obs)
        if self.cell is not None:
            assert state is not None
            features, state = self.cell(features, state)
        return self._params(features, obs), features, state

    def initial_state(self, batch: int) -> Tensor | None:
        return None if self.cell is None else self.cell.initial_state(batch, self.head_device)

    @property
    def head_device(self) -> torch.device:
        return next(self.head.parameters()).device

    def _params(self, features: Tensor, obs: Tensor) -> Params:
        params: Params = self.head(features)
        if self.mask_dim:
            params = (apply_mask(params[0], obs[..., -self.mask_dim:]), *params[1:])
        return params


class Critic(nn.Module):
    """V_phi(s): a body (an MLP, or a CNN for images), with `recurrent` an LSTM or GRU cell after it, and a scalar
    output. Takes flat observations [B, D] or `Sequences` (a recurrent critic: `sequence_values` runs it over a
    whole batch). With `trunk` (shared_trunk) the body and cell are that actor's own modules, not copies: only the
    output layer is the critic's alone, and fitting V moves the policy (learner.py checks the trust region after)."""

    def __init__(self, obs_dim: int, hidden: Sequence[int], activation: str, image: ImageLayout | None = None,
                 image_encoder: str = "paper", recurrent: str = "none", recurrent_hidden: int = 64,
                 trunk: Actor | None = None) -> None:
        super().__init__()
        self.activation = activation
        if trunk is None:
            self.body = make_body(obs_dim, hidden, activation, image, image_encoder)
            self.cell = make_cell(recurrent, self.body.out_dim, recurrent_hidden)
        else:
            self.body, self.cell = trunk.body, trunk.cell
        self.out = nn.Linear(self.body.out_dim if self.cell is None else self.cell.out_dim, 1)
        nn.init.orthogonal_(self.out.weight, gain=1.0)
        nn.init.zeros_(self.out.bias)

    def forward(self, inputs: Inputs) -> Tensor:
        values: Tensor = self.out(_features(self.body, self.cell, inputs)[0])
        return values.squeeze(-1)

    def features(self, inputs: Inputs) -> Tensor:
        """What the value head takes, for the rows of `inputs` in their flat order (valid steps of `Sequences`)."""
        return _features(self.body, self.cell, inputs)[0]

    def head_mse_backward(self, features: Tensor, targets: Tensor) -> None:
        """Set the value head's grads of mean((out(features) - targets)^2); the body gets none (a shared trunk kept
        out of the value fit: config value_fit_trunk)."""
        self._out_backward(features, targets)

    def penalized_backward(self, actor: Actor, dist: ActionDistribution, inputs: Inputs, targets: Tensor,
                           target_var: Tensor, ref: Params, max_kl: float, coef: float) -> None:
        """A shared trunk (`trunk` given): set each parameter's .grad to the gradient of
        objectives.shared_value_loss, the trunk computed once for both heads; the actor's head gets no gradient
        (it is not the critic's)."""
        features, obs = _features(self.body, self.cell, inputs)
        kl = dist.kl(ref, actor._params(features, obs))
        loss = shared_value_loss(self.out(features).squeeze(-1), targets, target_var, kl, max_kl, coef)
        params = list(self.parameters())
        for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
            p.grad = g

    def sequence_values(self, obs: Tensor, next_obs: Tensor, starts: Tensor,
                        state: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """A recurrent critic over a whole batch (obs and next_obs [T, N, D], starts [T, N]) from the state [N,
        state_dim] the previous batch left: V(s_t) [T, N]; V(s_{t+1}) [T, N], s_{t+1} seen after s_t's state (the
        true final observation where an episode ended); the state each step started from [T, N, state_dim]; and
        the state after the last step [N, state_dim]."""
        assert self.cell is not None
        outs, before, after = unroll(self.cell, self.body(obs), state, starts)
        next_outs = self.cell(self.body(next_obs), after)[0]
        return self.out(outs).squeeze(-1), self.out(next_outs).squeeze(-1), before, after[-1]

    def mse_backward(self, inputs: Inputs, targets: Tensor) -> None:
        """Set each parameter's .grad to the gradient of mean((V(inputs) - targets)^2). For an MLP, with or without a
        recurrent cell after it, the backward pass is written out (through time for the cell): it runs the kernels
        autograd runs, so the gradients are autograd's bit for bit (tested), at a third to a half of the overhead
        (the value fit takes hundreds of these per update). A CNN, or a cell without `step_backward`, goes through
        autograd."""
        written_out = self.cell is None or type(self.cell).step_backward is not RecurrentCell.step_backward
        if isinstance(self.body, ConvBody) or not written_out:
            for p in self.parameters():
                p.grad = None
            (self(inputs) - targets).pow(2).mean().backward()
            return
        with torch.no_grad():
            if isinstance(inputs, Sequences):
                self._recurrent_mse_backward(inputs, targets)
            else:
                assert self.cell is None, "a recurrent critic is fitted on sequences"
                layer_inputs = self._body_forward(inputs)
                grad = self._out_backward(layer_inputs[-1], targets)
                self._body_backward(layer_inputs, grad)

    def _recurrent_mse_backward(self, seq: Sequences, targets: Tensor) -> None:
        assert self.cell is not None
        steps, count = seq.obs.shape[0], seq.obs.shape[1]
        layer_inputs = self._body_forward(seq.obs.reshape(steps * count, -1))
        cell_in = layer_inputs[-1]
        wx = self.cell.input(cell_in).reshape(steps, count, -1)  # as F.linear runs it on [L, S, F]
        keep = (~seq.starts).unsqueeze(-1).to(seq.state.dtype)
        outs, saved = unroll_saving(self.cell, wx, seq.state, keep)
        d_feats = self._out_backward(outs[seq.valid], targets)
        d_outs = torch.zeros_like(outs)
        d_outs[seq.valid] = d_feats
        d_wx = unroll_backward(self.cell, saved, keep, d_outs).reshape(steps * count, -1)
        linear = self.cell.input
        linear.weight.grad, linear.bias.grad = d_wx.t().mm(cell_in), d_wx.sum(0)
        self._body_backward(layer_inputs, d_wx.mm(linear.weight))

    def _body_forward(self, obs: Tensor) -> list[Tensor]:
        """The input of every Linear of the MLP body, and its output last."""
        layer_inputs = [obs]
        for linear in self._body_linears():
            pre = torch.addmm(linear.bias, layer_inputs[-1], linear.weight.t())
            layer_inputs.append(torch.tanh(pre) if self.activation == "tanh" else torch.relu(pre))
        return layer_inputs

    def _out_backward(self, features: Tensor, targets: Tensor) -> Tensor:
        """V = out(features); set out's grads of mean (V - targets)^2 and return its gradient at the features."""
        values = torch.addmm(self.out.bias, features, self.out.weight.t())
        grad = (values - targets.unsqueeze(-1)) * (2.0 / features.shape[0])  # d loss / d V, [B, 1]
        self.out.weight.grad, self.out.bias.grad = grad.t() @ features, grad.sum(0)
        return grad @ self.out.weight

    def _body_backward(self, layer_inputs: list[Tensor], grad: Tensor) -> None:
        """From the gradient at the body's output, set the grads of the body's Linears (back through each
        activation first)."""
        linears = self._body_linears()
        for i in range(len(linears) - 1, -1, -1):
            x = layer_inputs[i + 1]  # the activation's output
            grad = (torch.ops.aten.tanh_backward(grad, x) if self.activation == "tanh"
                    else torch.ops.aten.threshold_backward(grad, x, 0))
            linears[i].weight.grad, linears[i].bias.grad = grad.t() @ layer_inputs[i], grad.sum(0)
            if i > 0:
                grad = grad @ linears[i].weight

    def _body_linears(self) -> list[nn.Linear]:
        assert isinstance(self.body, MLPBody), "the hand-written backward is for MLP bodies"
        return [m for m in self.body if isinstance(m, nn.Linear)]


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

