"""The `torch` backend, the reference: the op contract of DESIGN.md in plain PyTorch.

It is the specification every other backend must equal, written for clarity, not speed.
All arithmetic is in float32, in the contract's order, with one rounding at the end.
"""

from __future__ import annotations

import torch

from .step_param import StepParam

NAME = "torch"


def unavailable_reason(device: torch.device | None = None) -> str | None:
    return None  # plain PyTorch runs wherever the tensors are


def _broadcastable(p: StepParam, x: torch.Tensor) -> torch.Tensor:
    """The parameter as a float32 tensor that broadcasts against x ([Bp, Cp, 1, ..., 1])."""
    if p.table is None:
        return torch.tensor(p.value, dtype=torch.float32, device=x.device)
    if x.dim() == 1:
        return p.table.reshape(-1)
    return p.table.reshape(p.table.shape + (1,) * (x.dim() - 2))


def _sign_nan_is_zero(grad: torch.Tensor) -> torch.Tensor:
    s = torch.sign(grad.float())
    return torch.where(torch.isnan(s), torch.zeros_like(s), s)


_SIXTEEN_BIT = (torch.float16, torch.bfloat16)


def round_within_budget(y: torch.Tensor, x: torch.Tensor, limit, dtype: torch.dtype) -> torch.Tensor:
    """The float32 result y of an L-inf op stored as dtype. float32: as it is. float16 and bfloat16:
    rounded to nearest, then, where that is farther from x than both y and `limit` (eps; compared
    in float32), the neighbour one unit in the last place toward x. That neighbour lies between x
    and y, so rounding never leaves the eps ball nor the representable bounds."""
    rounded = y.to(dtype)
    if dtype not in _SIXTEEN_BIT:
        return rounded
    xf = x.float()
    value = rounded.float()
    away = (value - xf).abs()
    leaves = (away > limit) & (away > (y - xf).abs())
    return _moved_toward_x(rounded, value, xf, leaves)


def round_toward_x(y: torch.Tensor, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The float32 result y of an L2 op stored as dtype, rounded toward x: float32 as it is;
    float16 and bfloat16 rounded to nearest, then, where that lies beyond y as seen from x (y > x
    and it > y, or y < x and it < y; exact comparisons), the neighbour one unit in the last place
    toward x. So no element ends farther from x than y, and the norm never exceeds the float32 one."""
    rounded = y.to(dtype)
    if dtype not in _SIXTEEN_BIT:
        return rounded
    xf = x.float()
    value = rounded.float()
    beyond = ((y > xf) & (value > y)) | ((y < xf) & (value < y))
    return _moved_toward_x(rounded, value, xf, beyond)


def _moved_toward_x(rounded: torch.Tensor, value: torch.Tensor, xf: torch.Tensor, move: torch.Tensor) -> torch.Tensor:
    """rounded (16-bit; value: it in float32) with the elements where `move` holds moved one unit in
    the last place toward x."""
    bits = rounded.view(torch.int16).to(torch.int32) & 0xFFFF
    # Both dtypes are sign-magnitude: toward zero is bits - 1, away from zero bits + 1; from a zero,
    # the smallest subnormal on x's side.
    toward = torch.where((value > xf) == (value > 0), bits - 1, bits + 1)
    toward = torch.where((bits & 0x7FFF) == 0, torch.where(xf < 0, 0x8001, 0x0001), toward)
    bits = torch.where(move, toward, bits)
    return torch.where(bits >= 0x8000, bits - 0x10000, bits).to(torch.int16).view(rounded.dtype)


def clamp_below(y: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """max(y, bound): NaN in either propagates, and a tie keeps y, so a value on the bound keeps
    its bits (-0.0 stays -0.0 against a bound +0.0; DESIGN.md, signed zeros). torch.maximum is not
    used: which operand it returns on a tie differs between its vector and scalar paths."""
    return torch.where((bound > y) | torch.isnan(bound), bound, y)


def clamp_above(y: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """min(y, bound), as clamp_below."""
    return torch.where((bound < y) | torch.isnan(bound), bound, y)


def clamp(y: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    return clamp_above(clamp_below(y, lower), upper)


def linf_project_float(
    y: torch.Tensor, x: torch.Tensor, eps: StepParam, lower: StepParam, upper: StepParam
) -> torch.Tensor:
    """min(max(y, x - eps), x + eps), then min(max(., lower), upper), in float32."""
    xf = x.float()
    e = _broadcastable(eps, x)
    y = clamp(y, xf - e, xf + e)
    return clamp(y, _broadcastable(lower, x), _broadcastable(upper, x))


def linf_step_into(
    x_adv, grad, x, eps: StepParam, alpha: StepParam, lower: StepParam, upper: StepParam, targeted: bool, out
) -> None:
    s = _sign_nan_is_zero(grad)
    if targeted:
        s = -s
    y = x_adv.float() + _broadcastable(alpha, x) * s
    y = linf_project_float(y, x, eps, lower, upper)
    out.copy_(round_within_budget(y, x, _broadcastable(eps, x), x_adv.dtype))


def linf_project_into(x_adv, x, eps: StepParam, lower: StepParam, upper: StepParam, out) -> None:
    y = linf_project_float(x_adv.float(), x, eps, lower, upper)
    out.copy_(round_within_budget(y, x, _broadcastable(eps, x), x_adv.dtype))


# ---- L2: per sample b, norms over all non-batch elements, accumulated in float32 ----


def _per_sample_column(p: StepParam, batch: int, device) -> torch.Tensor:
    """eps or alpha (scalar or per sample) as a float32 [B, 1] column."""
    if p.table is None:
        return torch.full((batch, 1), p.value, dtype=torch.float32, device=device)
    return p.table.reshape(-1, 1).expand(batch, 1)


def _l2_norm(rows: torch.Tensor) -> torch.Tensor:
    """sqrt(sum of squares) of each row, in float32: [B, N] -> [B, 1]."""
    return (rows * rows).sum(dim=1, keepdim=True).sqrt()


# Float32 sums of squares can leave float32's range at either end; a row whose sum does is scaled
# by an exact power of two first (csrc/step_math.h says why these). Overflow (entries from about
# 1.8e19 on): 2^-80. Underflow (a sum below 2^-66, entries about 1e-20 and below, down to the
# smallest subnormal): 2^96, which makes every nonzero square a normal float32.
L2_OVERFLOW_SCALE = 2.0**-80
L2_UNDERFLOW_SCALE = 2.0**96
L2_UNDERFLOW_LIMIT = 2.0**-66
# A perturbation with a sum of squares below the limit (a norm below about 2^-33) can exceed eps
# only when eps is below 2^-32: only then is it scaled.
L2_UNDERFLOW_EPS = 2.0**-32
_FLOAT32_MAX = torch.finfo(torch.float32).max


def _scale_of(sum_sq: torch.Tensor, underflow: torch.Tensor) -> torch.Tensor:
    """Per row, the power of two its entries are scaled by before their norm is taken (1: none)."""
    one = torch.ones_like(sum_sq)
    scale = torch.where(underflow, L2_UNDERFLOW_SCALE * one, one)
    return torch.where(sum_sq > _FLOAT32_MAX, L2_OVERFLOW_SCALE * one, scale)


def _l2_rescale_and_clamp(delta, x, eps: StepParam, lower: StepParam, upper: StepParam, dtype) -> torch.Tensor:
    """delta ([B, N], float32) into the eps ball, added to x, clamped to the bounds. The factor is
    eps / ||delta||, taken from ||delta * scale|| when the sum of squares leaves float32's range."""
    e = _per_sample_column(eps, x.shape[0], x.device)
    sum_sq = (delta * delta).sum(dim=1, keepdim=True)
    scale = _scale_of(sum_sq, (sum_sq < L2_UNDERFLOW_LIMIT) & (e < L2_UNDERFLOW_EPS))
    scaled_norm = _l2_norm(delta * scale)
    scaled_eps = e * scale
    factor = torch.where(scale > 1, scaled_eps / scaled_norm, (e / scaled_norm) * scale)
    factor = torch.where(scaled_norm > scaled_eps, factor, torch.ones_like(factor))
    y = x.float() + (delta * factor).reshape(x.shape)
    y = clamp(y, _broadcastable(lower, x), _broadcastable(upper, x))
    return round_toward_x(y, x, dtype)


def l2_direction(g: torch.Tensor) -> torch.Tensor:
    """grad / ||grad|| per row of g ([B, N] float32), its limit where entries are infinite:
    sign(g_i) / sqrt(k) on the k infinite entries of a row and 0 elsewhere. NaN entries count as 0,
    a zero row stays 0, and a row whose sum of squares leaves float32's range with every entry
    finite is scaled first (exact: L2_OVERFLOW_SCALE, L2_UNDERFLOW_SCALE) to take its norm, so
    that any nonzero row, down to subnormal entries, gives a unit direction."""
    g = torch.where(torch.isnan(g), torch.zeros_like(g), g)
    sum_sq = (g * g).sum(dim=1, keepdim=True)
    infinite = torch.isinf(g)
    count = infinite.sum(dim=1, keepdim=True).float()
    scaled = g * _scale_of(sum_sq, sum_sq < L2_UNDERFLOW_LIMIT)
    norm = _l2_norm(scaled)
    d = torch.where(norm > 0, scaled / norm, torch.zeros_like(g))
    limit = torch.where(infinite, torch.sign(g) * (1 / count.clamp_min(1).sqrt()), torch.zeros_like(g))
    return torch.where(count > 0, limit, d)


def l2_step_into(
    x_adv, grad, x, eps: StepParam, alpha: StepParam, lower: StepParam, upper: StepParam, targeted: bool, out
) -> None:
    batch = x.shape[0]
    d = l2_direction(grad.float().reshape(batch, -1))
    if targeted:
        d = -d
    y = x_adv.float().reshape(batch, -1) + _per_sample_column(alpha, batch, x.device) * d
    delta = y - x.float().reshape(batch, -1)
    out.copy_(_l2_rescale_and_clamp(delta, x, eps, lower, upper, x_adv.dtype))


def l2_project_into(x_adv, x, eps: StepParam, lower: StepParam, upper: StepParam, out) -> None:
    batch = x.shape[0]
    delta = x_adv.float().reshape(batch, -1) - x.float().reshape(batch, -1)
    out.copy_(_l2_rescale_and_clamp(delta, x, eps, lower, upper, x_adv.dtype))
