"""RMSprop (the paper's optimizer, Sec. 5.1) with its state under the names DeepSpeed's universal
checkpoint understands.

`torch.optim.RMSprop` keeps `square_avg` and `momentum_buffer`; DeepSpeed's `ds_to_universal` converts
only Adam's state names (`exp_avg`, `exp_avg_sq`) and fails with `KeyError: 'exp_avg'` otherwise, so a
run could never change its world size. This RMSprop is the same update, step for step and bit for bit
(tested against torch's single-tensor implementation), keeping the running mean of squared gradients as
`exp_avg_sq` and the momentum buffer as `exp_avg` (zeros when momentum is 0), so elastic resume works
for it exactly as for Adam.
"""
from __future__ import annotations

from typing import Iterable

import torch


class RMSprop(torch.optim.Optimizer):
    """RMSprop: v = α v + (1-α) g²;  p -= lr · g / (√v + ε)   (with optional momentum and weight decay)."""

    def __init__(self, params: Iterable, lr: float = 1e-3, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0):
        if lr <= 0 or not 0 <= alpha < 1 or eps <= 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"invalid RMSprop settings lr={lr} alpha={alpha} eps={eps} "
                             f"momentum={momentum} weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
            wd, momentum = group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                square_avg = state["exp_avg_sq"]
                square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
                avg = square_avg.sqrt().add_(eps)
                if momentum > 0:
                    buf = state["exp_avg"]
                    buf.mul_(momentum).addcdiv_(grad, avg)
                    p.add_(buf, alpha=-lr)
                else:
                    p.addcdiv_(grad, avg, value=-lr)
        return loss
