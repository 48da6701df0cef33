"""The reference backend: the op contract of DESIGN.md in plain PyTorch.

It is the specification every other backend must equal, written for clarity, not speed.
All arithmetic is in float32, in the contract's order, with one rounding at the end.
"""

from __future__ import annotations

import torch

from .._checks import Param

NAME = "torch"


def unavailable_reason(device: torch.device | None = None) -> str | None:
    return None  # plain PyTorch runs wherever the tensors are


def _broadcastable(p: Param, x: torch.Tensor) -> torch.Tensor:
    """The parameter as a float32 tensor that broadcasts against x ([Bp, Cp, 1, ..., 1])."""
    if p.table is None:
        return torch.tensor(p.value, dtype=torch.float32, device=x.device)
    if x.dim() == 1:
        return p.table.reshape(-1)
    return p.table.reshape(p.table.shape + (1,) * (x.dim() - 2))


def _sign_nan_is_zero(grad: torch.Tensor) -> torch.Tensor:
    s = torch.sign(grad.float())
    return torch.where(torch.isnan(s), torch.zeros_like(s), s)


def linf_project_float(y: torch.Tensor, x: torch.Tensor, eps: Param, lower: Param, upper: Param) -> torch.Tensor:
    """min(max(y, x - eps), x + eps), then min(max(., lower), upper), in float32."""
    xf = x.float()
    e = _broadcastable(eps, x)
    y = torch.minimum(torch.maximum(y, xf - e), xf + e)
    return torch.minimum(torch.maximum(y, _broadcastable(lower, x)), _broadcastable(upper, x))


def linf_step_into(x_adv, grad, x, eps: Param, alpha: Param, lower: Param, upper: Param, targeted: bool, out) -> None:
    s = _sign_nan_is_zero(grad)
    if targeted:
        s = -s
    y = x_adv.float() + _broadcastable(alpha, x) * s
    out.copy_(linf_project_float(y, x, eps, lower, upper).to(x_adv.dtype))


def linf_project_into(x_adv, x, eps: Param, lower: Param, upper: Param, out) -> None:
    out.copy_(linf_project_float(x_adv.float(), x, eps, lower, upper).to(x_adv.dtype))
