"""The reference trainer's optimisation: LARS and the learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import nn

from propos_losses import defaults as D

__all__ = ["LARS", "build_optimizer", "learning_rate_factor"]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    Parameters with one dimension (biases, BatchNorm) get plain SGD without weight decay, as in BYOL.

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        momentum: heavy-ball momentum.
        weight_decay: L2 penalty of matrices and kernels.
        trust_coefficient: ``eta`` of the trust ratio.

    Example:
        >>> w = nn.Parameter(torch.ones(2, 2))
        >>> opt = LARS([w], lr=0.1)
        >>> w.sum().backward(); opt.step()
        >>> bool((w < 1).all())
        True
    """

    def __init__(
        self,
        params: Any,
        lr: float,
        momentum: float = D.SGD_MOMENTUM,
        weight_decay: float = D.WEIGHT_DECAY,
        trust_coefficient: float = 0.001,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        super().__init__(
            params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient)
        )

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if param.ndim > 1:
                    grad = grad.add(param, alpha=group["weight_decay"])
                    param_norm, grad_norm = torch.linalg.vector_norm(param), torch.linalg.vector_norm(grad)
                    ratio = torch.where(
                        (param_norm > 0) & (grad_norm > 0),
                        group["trust_coefficient"] * param_norm / grad_norm,
                        torch.ones_like(param_norm),
                    )
                    grad = grad.mul(ratio)
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(grad).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                param.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def learning_rate_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup_steps``, then cosine decay to 0 at ``total_steps``.

    Example:
        >>> [round(learning_rate_factor(s, 10, 2), 3) for s in (0, 1, 2, 6, 9)]
        [0.5, 1.0, 1.0, 0.5, 0.038]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / decay_steps))


def build_optimizer(config: Any, online: nn.Module, predictor: nn.Module) -> torch.optim.Optimizer:
    """SGD (or LARS) over the online network and the predictor; each group's ``lr_scale`` multiplies the lr."""
    groups = [
        {"params": list(online.parameters()), "lr_scale": 1.0},
        {"params": list(predictor.parameters()), "lr_scale": config.predictor_lr_multiplier},
    ]
    optimizer = LARS if config.optimizer == "lars" else torch.optim.SGD
    return optimizer(groups, lr=config.lr, momentum=config.sgd_momentum, weight_decay=config.weight_decay)
