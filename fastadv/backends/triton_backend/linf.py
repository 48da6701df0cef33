"""The L-inf step and projection: one elementwise kernel (_linf_kernel, autotuned on the GPU)
and its launcher (_launch_linf)."""

import triton
import triton.language as tl

from .launch import _jit, _wrap, interpreting
from .step_math import _clamp, _geometry, _load_float32, _param, _table_strides, _within_budget

# The L-inf kernel's configs, timed per size on the GPU; the interpreter cannot time them (no GPU
# driver), so it runs _INTERPRETER_CONFIG.
_GPU_CONFIGS = [triton.Config({"BLOCK_SIZE": b}, num_warps=w) for b in (1024, 2048, 4096, 8192) for w in (4, 8)]
_INTERPRETER_CONFIG = {"BLOCK_SIZE": 4096}


@triton.autotune(configs=_GPU_CONFIGS, key=["n_elements"], restore_value=["out_ptr"])
@_jit
def _linf_kernel(
    x_adv_ptr, grad_ptr, x_ptr, out_ptr,
    eps_ptr, alpha_ptr, lower_ptr, upper_ptr,
    eps_sb, eps_sc, alpha_sb, alpha_sc, lower_sb, lower_sc, upper_sb, upper_sc,
    eps_value, alpha_value, lower_value, upper_value,
    n_elements, sample_size, channel_div, channels,
    EPS_TABLE: tl.constexpr, ALPHA_TABLE: tl.constexpr, LOWER_TABLE: tl.constexpr,
    UPPER_TABLE: tl.constexpr, HAS_GRAD: tl.constexpr, TARGETED: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):  # fmt: skip
    # The contract's order, in float32: sign step, eps-ball projection, bounds, one rounding.
    pid = tl.program_id(0).to(tl.int64)  # 64-bit offsets: tensors may exceed 2^31 elements
    offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n_elements
    # Sample and channel of each element; dead code (removed) when no parameter is a table.
    b = offs // sample_size
    c = (offs // channel_div) % channels
    x_adv = _load_float32(x_adv_ptr, offs, mask, 0.0)
    x = _load_float32(x_ptr, offs, mask, 0.0)
    eps = _param(eps_ptr, eps_value, eps_sb, eps_sc, b, c, mask, EPS_TABLE)
    lower = _param(lower_ptr, lower_value, lower_sb, lower_sc, b, c, mask, LOWER_TABLE)
    upper = _param(upper_ptr, upper_value, upper_sb, upper_sc, b, c, mask, UPPER_TABLE)
    y = x_adv
    if HAS_GRAD:
        g = _load_float32(grad_ptr, offs, mask, 0.0)
        s = tl.where(g > 0, 1.0, tl.where(g < 0, -1.0, 0.0))  # NaN compares false: sign 0
        alpha = _param(alpha_ptr, alpha_value, alpha_sb, alpha_sc, b, c, mask, ALPHA_TABLE)
        # targeted: x_adv - alpha * s, bit for bit x_adv + alpha * (-s) as the contract says;
        # not `-s`, which Triton 3.6 computes as 0 - s and so turns a zero's -0.0 into +0.0
        y = x_adv - alpha * s if TARGETED else x_adv + alpha * s
    y = _clamp(_clamp(y, x - eps, x + eps), lower, upper)
    tl.store(out_ptr + offs, _within_budget(y, x, eps, out_ptr), mask=mask)


def _launch_linf(x_adv, grad, x, tables, values, targeted, out):
    n = x_adv.numel()
    if n == 0:
        return
    sample_size, channel_div, channels = _geometry(x_adv)
    pointers = [t if t is not None else x_adv for t in tables]  # unused when not a table
    strides = [s for t in tables for s in _table_strides(t)]
    eps_t, alpha_t, lower_t, upper_t = (t is not None for t in tables)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_SIZE"]),)  # noqa: E731
    config = _INTERPRETER_CONFIG if interpreting() else {}  # on a GPU the autotuner picks it
    _wrap(_linf_kernel)[grid](
        x_adv, grad if grad is not None else x_adv, x, out,
        *pointers, *strides, *values,
        n, sample_size, channel_div, channels,
        EPS_TABLE=eps_t, ALPHA_TABLE=alpha_t, LOWER_TABLE=lower_t, UPPER_TABLE=upper_t,
        HAS_GRAD=grad is not None, TARGETED=targeted, **config,
    )  # fmt: skip
