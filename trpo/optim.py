"""Adam for the critic, without torch.optim.

Constructing any torch.optim optimizer imports torch._dynamo, which nothing else in trpo needs: about 70 MiB
of memory and a second of start-up here. This class runs the same fused Adam kernel that
torch.optim.Adam(fused=True) runs (Kingma & Ba, 2015, no weight decay, no AMSGrad), so the parameters it
produces are bit for bit those of torch.optim, and its state dict has torch.optim.Adam's layout, so
checkpoints load with either.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


class Adam:
    """Adam over a fixed list of parameters: `zero_grad()`, `loss.backward()`, `step()`."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params = list(params)
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        # Step counts as float32 tensors on the parameters' device, as the fused kernel takes them.
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update from the gradients in `.grad` (parameters without a gradient are left alone)."""
        live = [(i, p.grad) for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        steps = [self.steps[i] for i, _ in live]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            [self.params[i] for i, _ in live], [grad for _, grad in live],
            [self.exp_avg[i] for i, _ in live], [self.exp_avg_sq[i] for i, _ in live], [], steps,
            lr=self.lr, beta1=self.betas[0], beta2=self.betas[1], weight_decay=0.0, eps=self.eps,
            amsgrad=False, maximize=False,
        )

    def state_dict(self) -> dict[str, Any]:
        """torch.optim.Adam's layout: per-parameter state for those stepped at least once, and one group."""
        state = {i: {"step": self.steps[i].clone(), "exp_avg": self.exp_avg[i].clone(),
                     "exp_avg_sq": self.exp_avg_sq[i].clone()}
                 for i in range(len(self.params)) if float(self.steps[i]) > 0}
        group = {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": 0.0, "amsgrad": False,
                 "maximize": False, "foreach": None, "capturable": False, "differentiable": False, "fused": True,
                 "decoupled_weight_decay": False, "params": list(range(len(self.params)))}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        (group,) = state_dict["param_groups"]
        if len(group["params"]) != len(self.params):
            raise ValueError(f"optimizer state holds {len(group['params'])} parameters, the critic has "
                             f"{len(self.params)}")
        self.lr, self.eps = float(group["lr"]), float(group["eps"])
        self.betas = (float(group["betas"][0]), float(group["betas"][1]))
        for position, index in enumerate(group["params"]):
            saved = state_dict["state"].get(index)
            if saved is None:
                continue
            self.steps[position].copy_(torch.as_tensor(saved["step"], dtype=torch.float32))
            self.exp_avg[position].copy_(saved["exp_avg"])
            self.exp_avg_sq[position].copy_(saved["exp_avg_sq"])
