"""The ops' argument checks (tensors, `out`, layouts) and the conversion of eps, alpha, lower and
upper into the kernels' StepParams, shared by every public op (written once). The checks every
layer above the ops shares (numbers, names, images and labels) are in `checks.py`.

Each check raises TypeError or ValueError whose message starts with the argument's name.
Values inside accelerator tensors are never read (that would synchronize with the host);
Python numbers and CPU tensors are checked.
"""

from __future__ import annotations

import functools
import math
import struct

import torch

from .backends.step_param import StepParam

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

Number = int | float
ParamLike = Number | torch.Tensor


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def to_float32(value: float) -> float:
    """Rounds a Python float to the nearest float32, as the kernels will see it."""
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


def check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32, float16 or bfloat16, got {t.dtype}")
    return t


def check_inputs(x_adv: object, grad: object | None, x: object) -> None:
    """x_adv, grad (None for projections) and x: floating tensors of one shape and device."""
    check_tensor("x_adv", x_adv)
    check_tensor("x", x)
    if x_adv.dim() < 1:
        raise ValueError("x_adv must have at least one dimension (dim 0 is the batch), got a 0-d tensor")
    others = [("x", x)] if grad is None else [("grad", check_tensor("grad", grad)), ("x", x)]
    for name, t in others:
        if t.shape != x_adv.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but x_adv has shape {tuple(x_adv.shape)}")
        if t.device != x_adv.device:
            raise ValueError(f"{name} is on {t.device} but x_adv is on {x_adv.device}")
    if x.dtype != x_adv.dtype:
        raise TypeError(f"x has dtype {x.dtype} but x_adv has dtype {x_adv.dtype}; they must match")


def to_step_param(
    name: str, value: object, x: torch.Tensor, *, per_channel: bool, nonnegative: bool, finite: bool = False
) -> StepParam:
    """eps / alpha / lower / upper checked and in the form the kernels take (a StepParam).

    Accepts a Python number, a 0-d tensor, a 1-d tensor of length B (per sample), or a tensor
    broadcastable to x's shape whose only non-1 dims are 0 (batch) and 1 (channel, only when
    `per_channel`). NaN is refused; with `finite` (eps, alpha: an infinite budget or step has no
    meaning), so are infinities and numbers beyond float32's range. Only values the host can read
    are checked: Python numbers and CPU tensors (DESIGN.md, "No op synchronizes")."""
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
        raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    if not isinstance(value, torch.Tensor):
        return _number_param(name, float(value), nonnegative, finite)
    t = value
    if t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must be a real number tensor, got dtype {t.dtype}")
    if t.dim() == 0 and t.device.type == "cpu" and not _compiling():
        return _number_param(name, float(t.item()), nonnegative, finite)
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x_adv is on {x.device}; move it to {x.device}")
    table = t.reshape(1, 1) if t.dim() == 0 else _table_shape(name, t, x, per_channel)
    table = table.to(torch.float32).contiguous()
    if table.device.type == "cpu" and table.numel() and not _compiling():
        # one pass (an attack calls an op per step): the extremes show NaN (both are NaN then),
        # an infinity and a negative entry
        low, high = (float(v) for v in torch.aminmax(table))
        if math.isnan(low):
            raise ValueError(f"{name} contains NaN")
        if finite and (math.isinf(low) or math.isinf(high)):
            raise ValueError(f"{name} must be finite, got an infinite entry (or one beyond float32's range)")
        if nonnegative and low < 0:
            raise ValueError(f"{name} must be >= 0, got a negative entry ({low})")
    return StepParam(0.0, table)


def _number_param(name: str, v: float, nonnegative: bool, finite: bool) -> StepParam:
    # an attack passes the same few numbers at every step: checked once (the sign keeps -0.0, a
    # bound whose sign reaches the output, apart from 0.0, which compares equal to it)
    return _checked_number(name, v, math.copysign(1.0, v), nonnegative, finite)


@functools.lru_cache(maxsize=256)
def _checked_number(name: str, v: float, sign: float, nonnegative: bool, finite: bool) -> StepParam:
    if math.isnan(v):
        raise ValueError(f"{name} must not be NaN")
    if nonnegative and v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    value = to_float32(v)
    if finite and math.isinf(value):
        beyond = "" if math.isinf(v) else " (beyond float32's range, about 3.4e38)"
        raise ValueError(f"{name} must be finite, got {v}{beyond}")
    return StepParam(value, None)


def _table_shape(name: str, t: torch.Tensor, x: torch.Tensor, per_channel: bool) -> torch.Tensor:
    batch = x.shape[0]
    allowed = "[B], [B,1,...]" + (", [1,C,1,...] or [B,C,1,...]" if per_channel else "")
    if t.dim() == 1:
        if t.shape[0] != batch and not (per_channel and x.dim() == 1 and t.shape[0] == 1):
            raise ValueError(
                f"{name}: a 1-d tensor is per sample and must have length {batch} (the batch size), "
                f"got length {t.shape[0]}"
            )
        return t.reshape(-1, 1)
    if t.dim() > x.dim():
        raise ValueError(f"{name} has shape {tuple(t.shape)}, more dims than x ({tuple(x.shape)}); allowed: {allowed}")
    shape = (1,) * (x.dim() - t.dim()) + tuple(t.shape)
    for dim, (size, x_size) in enumerate(zip(shape, x.shape, strict=True)):
        ok = size == 1 or (size == x_size and (dim == 0 or (dim == 1 and per_channel)))
        if not ok:
            what = (
                "per-channel values are not allowed: L2 eps and alpha are per sample at most"
                if dim == 1 and size == x_size
                else "wrong shape"
            )
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} for x of shape {tuple(x.shape)} ({what}); allowed: {allowed}"
            )
    return t.reshape(shape[0], shape[1] if x.dim() >= 2 else 1)


def check_bounds(lower: StepParam, upper: StepParam) -> None:
    """lower <= upper wherever it can be checked without a device sync."""
    if lower.table is None and upper.table is None:  # two numbers: no tensor needed (every attack step)
        if lower.value > upper.value:
            raise ValueError(f"lower must be <= upper everywhere, got lower={_show(lower)} and upper={_show(upper)}")
        return
    lo = lower.table if lower.table is not None else torch.tensor(lower.value)
    hi = upper.table if upper.table is not None else torch.tensor(upper.value)
    if lo.device.type != "cpu" or hi.device.type != "cpu" or _compiling():
        return
    if (lo > hi).any():
        raise ValueError(f"lower must be <= upper everywhere, got lower={_show(lower)} and upper={_show(upper)}")


def _show(p: StepParam) -> str:
    return repr(p.value) if p.table is None else f"a tensor of shape {tuple(p.table.shape)}"


def _byte_range(t: torch.Tensor) -> tuple[int, int]:
    start = t.data_ptr()
    span = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True)) + 1
    return start, start + span * t.element_size()


def may_overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when the memory of a and b may intersect (a conservative byte-range test)."""
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device:
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    a0, a1 = _byte_range(a)
    b0, b1 = _byte_range(b)
    return a0 < b1 and b0 < a1


def check_out(out: object, x_adv: torch.Tensor, grad: torch.Tensor | None, x: torch.Tensor) -> None:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor or None, got {type(out).__name__}")
    if out.shape != x_adv.shape:
        raise ValueError(f"out has shape {tuple(out.shape)} but x_adv has shape {tuple(x_adv.shape)}")
    if out.dtype != x_adv.dtype:
        raise TypeError(f"out has dtype {out.dtype} but x_adv has dtype {x_adv.dtype}; they must match")
    if out.device != x_adv.device:
        raise ValueError(f"out is on {out.device} but x_adv is on {x_adv.device}")
    if _compiling():
        return  # fake tensors have no addresses; eager runs of the same code did these checks
    if torch._debug_has_internal_overlap(out) == 1:
        raise ValueError("out has internal overlap (e.g. an expanded tensor); it cannot be written")
    for name, t in (("grad", grad), ("x", x)):
        if t is not None and may_overlap(out, t):
            raise ValueError(f"out overlaps {name}; pass a separate tensor (out=x_adv is the allowed in-place form)")
    same_view = out.data_ptr() == x_adv.data_ptr() and out.stride() == x_adv.stride()
    if not same_view and may_overlap(out, x_adv):
        raise ValueError("out partially overlaps x_adv; use out=x_adv for in place or a separate tensor")


def native_format(t: torch.Tensor) -> torch.memory_format | None:
    """The memory format the kernels read natively, or None for other strides."""
    if t.is_contiguous():
        return torch.contiguous_format
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return None


def in_format(t: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """t itself when its memory order is `fmt`'s, else a copy in `fmt`."""
    return t if native_format(t) == fmt or t.is_contiguous(memory_format=fmt) else t.contiguous(memory_format=fmt)
