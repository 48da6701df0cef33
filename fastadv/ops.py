"""The public op API: argument checks, layouts, and the backend choice (check_backend_name,
resolve_backend: backends/__init__.py). Contract: DESIGN.md, "The op contract".

An attack calls these functions, never a kernel. Tensors reach the backends in one native
memory layout (contiguous or channels_last): other strides are copied in, and `out` keeps
x_adv's layout.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .backends import BACKENDS, available_backends, check_backend_name, resolve_backend
from .op_checks import (
    ParamLike,
    check_bounds,
    check_inputs,
    check_out,
    in_format,
    native_format,
    to_step_param,
)

__all__ = [
    "linf_step",
    "linf_project",
    "l2_step",
    "l2_project",
    "available_backends",
    "check_backend_name",
    "resolve_backend",
]


def linf_step(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x: torch.Tensor,
    eps: ParamLike,
    alpha: ParamLike,
    lower: ParamLike = 0.0,
    upper: ParamLike = 1.0,
    *,
    targeted: bool = False,
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """One fused L-inf attack step: ``clamp(clip_eps(x_adv + alpha * sign(grad)), lower, upper)``.

    Per element, in float32: ``s = sign(grad)`` (0 for 0 and NaN; negated when ``targeted``),
    ``y = x_adv + alpha * s``, ``y = min(max(y, x - eps), x + eps)``,
    ``y = min(max(y, lower), upper)``, rounded once to x_adv's dtype (in float16 and bfloat16,
    toward x where nearest rounding would leave the ball: ``|out - x| <= eps`` holds).

    Args:
        x_adv, grad, x: tensors of one shape and device, dim >= 1 (dim 0 is the batch). x_adv and
            x share a dtype among float32, float16, bfloat16; grad may be any of the three.
        eps, alpha: finite, >= 0. lower, upper: bounds with lower <= upper (infinite: no clamp). Each is a number, a 0-d
            tensor, a 1-d tensor of length B (per sample), or a tensor broadcastable to x whose
            only non-1 dims are 0 and/or 1, e.g. [B,1,1,1], [1,C,1,1], [B,C,1,1].
        targeted: step down the gradient (towards a target class) instead of up.
        out: where to write (same shape and dtype as x_adv); ``out=x_adv`` is in place.
        backend: "auto" (FASTADV_BACKEND, else the fastest available), "torch", "triton",
            "cpu" or "cuda".

    Returns:
        ``out``, or a new tensor in x_adv's memory layout.

    Raises:
        TypeError / ValueError naming the argument for bad input (``out`` is then untouched);
        RuntimeError when the requested backend is unavailable, saying why.
    """
    return _step("linf", x_adv, grad, x, eps, alpha, lower, upper, targeted, out, backend)


def linf_project(
    x_adv: torch.Tensor,
    x: torch.Tensor,
    eps: ParamLike,
    lower: ParamLike = 0.0,
    upper: ParamLike = 1.0,
    *,
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Projects x_adv onto the L-inf ball of radius eps around x, then onto [lower, upper]:
    linf_step without the gradient step (used after a random start). Arguments, layouts,
    errors and backends as for :func:`linf_step`."""
    return _project("linf", x_adv, x, eps, lower, upper, out, backend)


def l2_step(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x: torch.Tensor,
    eps: ParamLike,
    alpha: ParamLike,
    lower: ParamLike = 0.0,
    upper: ParamLike = 1.0,
    *,
    targeted: bool = False,
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """One fused L2 attack step, per sample b (norms over all non-batch dims, in float32)::

        d = grad_b / ||grad_b||        (0 where the norm is 0; NaN entries count as 0; -d if targeted;
                                        with k > 0 infinite entries, sign(g_i) / sqrt(k) on them, 0 elsewhere)
        delta = x_adv_b + alpha_b * d - x_b
        delta *= eps_b / ||delta||     (only where ||delta|| > eps_b)
        out_b = clamp(x_b + delta, lower, upper)   (float16/bfloat16: each element rounded toward x)

    eps and alpha are numbers, 0-d tensors or per-sample tensors ([B] or [B,1,...]); lower and
    upper may also be per channel. Other arguments, layouts, errors and backends as for
    :func:`linf_step`. Backends agree with the reference to rtol 1e-5 in float32 (their sums
    run in another order) and to one unit in the last place in float16/bfloat16; with x inside
    the bounds, ``||out_b - x_b|| <= eps_b * (1 + 1e-5)`` holds in float32, up to the rounding of
    ``x_b + delta`` (2^-24 ||out_b||, which matters only for an eps tiny next to x) and to the
    underflow of the float32 sum of squares (distances below 2^-63 sqrt(n) are not resolved).
    """
    return _step("l2", x_adv, grad, x, eps, alpha, lower, upper, targeted, out, backend)


def l2_project(
    x_adv: torch.Tensor,
    x: torch.Tensor,
    eps: ParamLike,
    lower: ParamLike = 0.0,
    upper: ParamLike = 1.0,
    *,
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Projects x_adv onto the L2 ball of radius eps around x (per sample), then clamps to
    [lower, upper]: :func:`l2_step` without the gradient step."""
    return _project("l2", x_adv, x, eps, lower, upper, out, backend)


def _step(norm: str, x_adv, grad, x, eps, alpha, lower, upper, targeted, out, backend) -> torch.Tensor:
    """Checks, then the backend's `{norm}_step_into` in a native layout."""
    if not isinstance(targeted, bool):
        raise TypeError(f"targeted must be a bool, got {type(targeted).__name__}")
    eps_p, lower_p, upper_p, impl = _check_common(norm, x_adv, grad, x, eps, lower, upper, out, backend)
    alpha_p = to_step_param("alpha", alpha, x_adv, per_channel=norm == "linf", nonnegative=True, finite=True)
    step_into = getattr(impl, f"{norm}_step_into")

    def kernel(xa, g, xx, o):
        step_into(xa, g, xx, eps_p, alpha_p, lower_p, upper_p, targeted, o)

    return _run_in_native_layout(kernel, x_adv, grad, x, out)


def _project(norm: str, x_adv, x, eps, lower, upper, out, backend) -> torch.Tensor:
    """Checks, then the backend's `{norm}_project_into` in a native layout."""
    eps_p, lower_p, upper_p, impl = _check_common(norm, x_adv, None, x, eps, lower, upper, out, backend)
    project_into = getattr(impl, f"{norm}_project_into")

    def kernel(xa, _g, xx, o):
        project_into(xa, xx, eps_p, lower_p, upper_p, o)

    return _run_in_native_layout(kernel, x_adv, None, x, out)


def _check_common(norm: str, x_adv, grad, x, eps, lower, upper, out, backend):
    """The checks every op shares; returns (eps, lower, upper) as StepParams and the backend.
    L2 norms are per sample, so an L2 eps cannot be per channel."""
    check_inputs(x_adv, grad, x)
    eps_p = to_step_param("eps", eps, x_adv, per_channel=norm == "linf", nonnegative=True, finite=True)
    lower_p = to_step_param("lower", lower, x_adv, per_channel=True, nonnegative=False)
    upper_p = to_step_param("upper", upper, x_adv, per_channel=True, nonnegative=False)
    check_bounds(lower_p, upper_p)
    if out is not None:
        check_out(out, x_adv, grad, x)
    return eps_p, lower_p, upper_p, BACKENDS[resolve_backend(backend, x_adv.device)]


def _run_in_native_layout(
    kernel: Callable, x_adv: torch.Tensor, grad: torch.Tensor | None, x: torch.Tensor, out: torch.Tensor | None
) -> torch.Tensor:
    """Runs kernel(x_adv, grad, x, target) with all four in x_adv's native layout (contiguous
    when x_adv has other strides), then copies into `out` if it could not be written directly."""
    if out is None:
        out = torch.empty_like(x_adv)  # x_adv's layout when x_adv is dense, else contiguous
    if x_adv.numel() == 0:
        return out
    fmt = native_format(x_adv) or torch.contiguous_format
    x_adv_n = in_format(x_adv, fmt)
    grad_n = None if grad is None else in_format(grad, fmt)
    x_n = in_format(x, fmt)
    direct = native_format(out) == fmt or out.is_contiguous(memory_format=fmt)
    target = out if direct else torch.empty_like(x_adv_n)
    kernel(x_adv_n, grad_n, x_n, target)
    if target is not out:
        out.copy_(target)
    return out
