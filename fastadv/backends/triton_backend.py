"""The `triton` backend: the L-inf and L2 steps and projections as Triton kernels, registered as
torch.library ops fastadv_triton::{linf,l2}_{step,project}_out (the schemas of csrc/schemas.h) so
that they trace under torch.compile and CUDA graphs.

Three layers with one name each: the @triton.jit kernels (_linf_kernel, _l2_sample_kernel,
_l2_chunk_kernel), their launchers (_launch_linf, _launch_l2) and the registered ops, which the
public fastadv.ops functions call through backends/step_ops.py. Runs on CUDA tensors, and on CPU
tensors under TRITON_INTERPRET=1 (how the tests check it without a GPU), read at each launch, so
the variable may be set after fastadv is imported. Importing this module never touches a GPU; it
needs Triton, so the registry (backends/__init__.py) imports it only when Triton imports.
"""

import functools
import types
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.runtime.autotuner import Autotuner
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

from .step_ops import StepOps

NAME = "triton"

# L2: a sample of at most _L2_ONE_PROGRAM elements is done by one program in one launch: x_adv,
# grad and x are read once and out written once (16 bytes per float32 element). Larger samples use
# a split reduction over chunks of _L2_CHUNK elements in three launches: the partial sums of grad^2
# (4 bytes/element), of delta^2 (12), then the write (16): 32 bytes per element, the fewest for a
# two-norm-deep dependency without keeping the sample on chip.
_L2_ONE_PROGRAM = 8192
_L2_CHUNK = 4096
# The work items (samples, or (sample, chunk) pairs) are shared among at most this many programs,
# each striding over them, so any batch launches (a grid's first axis holds at most 2^31 - 1
# programs). Up to this many items, which is every batch that fits in memory today, each program
# does one. Read at each launch, so a test can lower it.
_L2_MAX_PROGRAMS = 65535
# The L-inf kernel's configs, timed per size on the GPU; the interpreter cannot time them (no GPU
# driver), so it runs _INTERPRETER_CONFIG.
_GPU_CONFIGS = [triton.Config({"BLOCK_SIZE": b}, num_warps=w) for b in (1024, 2048, 4096, 8192) for w in (4, 8)]
_INTERPRETER_CONFIG = {"BLOCK_SIZE": 4096}


class _L2Launch(NamedTuple):
    """How _launch_l2 splits a batch: `programs` programs (the grid) take the `n_work` work items
    in turn (program p does items p, p + programs, ...). A work item is a sample (one program per
    sample, `block` its padded size) or, when `split`, one of a sample's `n_chunks` chunks of
    `block` elements (item i is chunk i % n_chunks of sample i // n_chunks)."""

    split: bool
    block: int
    n_chunks: int
    n_work: int
    programs: int


def _l2_launch(batch: int, sample_size: int) -> _L2Launch:
    """The L2 kernels' grid for `batch` samples of `sample_size` elements (pure Python, no GPU)."""
    if sample_size <= _L2_ONE_PROGRAM:
        split, block, n_chunks = False, 1 << max(sample_size - 1, 0).bit_length(), 1
    else:
        split, block, n_chunks = True, _L2_CHUNK, -(-sample_size // _L2_CHUNK)
    n_work = batch * n_chunks
    return _L2Launch(split, block, n_chunks, n_work, max(1, min(n_work, _L2_MAX_PROGRAMS)))


def interpreting() -> bool:
    """Whether the kernels run in Triton's interpreter (TRITON_INTERPRET, as Triton reads it), now."""
    return bool(triton.knobs.runtime.interpret)


def unavailable_reason(device: torch.device | None = None) -> str | None:
    if device is None:
        if torch.cuda.is_available() or interpreting():
            return None
        return "no CUDA GPU is available (Triton runs CPU tensors only under TRITON_INTERPRET=1)"
    if device.type == "cuda" or (device.type == "cpu" and interpreting()):
        return None
    return f"Triton runs CUDA tensors (CPU tensors only under TRITON_INTERPRET=1), these are on {device}"


def _jit(fn):
    """@triton.jit, whatever TRITON_INTERPRET says at import: triton.jit makes an interpreted
    function when it is set, this always the compiler's JITFunction, from which _interpreted
    derives the interpreter's form when a launch finds the variable set."""
    return JITFunction(fn)


class _InterpretedLanguage:
    """triton.language as the interpreter's kernels see it: its @jit functions (tl.sum) made by
    triton.jit when Triton was imported, so compiled ones unless TRITON_INTERPRET was set then,
    interpreted; every other name looked up in triton.language when it is used (the interpreter
    patches the builtins there while a kernel runs). The converse cannot be done: with
    TRITON_INTERPRET set when Triton is imported, its library is interpreted only, and the GPU
    needs the variable unset then."""

    def __init__(self):
        self._functions = {}

    def __getattr__(self, name):
        value = getattr(tl, name)
        if not isinstance(value, JITFunction):
            return value
        if name not in self._functions:
            self._functions[name] = InterpretedFunction(value.fn)
        return self._functions[name]


@functools.cache
def _interpreted() -> dict:
    """This module's namespace as the interpreter runs it: each @triton.jit function (and the
    autotuned one's) replaced by an InterpretedFunction of a copy bound to this namespace, since
    the kernels call their helpers by global name and a JITFunction cannot be called outside a
    compiled kernel; `tl` the language with its own @jit functions interpreted. The interpreter
    also adds its own names here, not to the module."""
    # triton.language itself stays too, under another name: the interpreter finds and patches it there
    namespace = {**globals(), "tl": _InterpretedLanguage(), "_triton_language": tl}
    for name, value in globals().items():
        fn = value.fn if isinstance(value, Autotuner) else value
        if isinstance(fn, JITFunction):
            code = fn.fn
            copy = types.FunctionType(code.__code__, namespace, code.__name__, code.__defaults__, code.__closure__)
            namespace[name] = InterpretedFunction(copy)
    return namespace


def _wrap(kernel):
    """The launcher of `kernel` (kernel[grid](...)) in the mode a launch finds: under
    TRITON_INTERPRET the interpreter's eager form (torch 2.11's wrap_triton refuses an
    interpreted function, torch 2.14's hands it back unwrapped), else
    torch.library.wrap_triton(kernel), so torch.compile and opcheck trace the launch."""
    if interpreting():
        jit = kernel.fn if isinstance(kernel, Autotuner) else kernel
        return _interpreted()[jit.fn.__name__]
    return torch.library.wrap_triton(kernel)


@_jit
def _param(ptr, value, stride_b, stride_c, b, c, mask, IS_TABLE: tl.constexpr):
    if IS_TABLE:
        return tl.load(ptr + b * stride_b + c * stride_c, mask=mask, other=0.0)
    else:
        # Triton types a float argument outside float32's normal range (a subnormal eps,
        # say) as fp64; the value is float32-exact, so this cast changes nothing.
        return tl.cast(value, tl.float32)


@_jit
def _load_float32(ptr, offs, mask, other):
    # Masked-off lanes read `other` (without it they are undefined). bfloat16 is widened by a
    # shift of its bits: exact, and the interpreter's own cast gets subnormals wrong.
    v = tl.load(ptr + offs, mask=mask, other=other)
    if ptr.dtype.element_ty == tl.bfloat16:
        return (v.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        return v.to(tl.float32)


@_jit
def _to_output_dtype(y, out_ptr):
    # float32 -> bfloat16 rounded to nearest even in integer arithmetic: the interpreter's
    # own cast truncates, and this way GPU and interpreter run the same code.
    if out_ptr.dtype.element_ty == tl.bfloat16:
        bits = y.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(y != y, 0x7FC0, rounded)  # NaN stays a (quiet) NaN
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return y.to(out_ptr.dtype.element_ty)


@_jit
def _within_budget(y, x, limit, out_ptr):
    # y rounded to nearest in the output dtype; for float16 and bfloat16, where that is farther
    # from x than both y and `limit` (eps for L-inf, 0 for L2), the neighbour one unit in the
    # last place toward x instead (step_math.h's within_budget, the contract's rule).
    rounded = _to_output_dtype(y, out_ptr)
    if out_ptr.dtype.element_ty == tl.float32:
        return rounded
    else:
        bits = rounded.to(tl.uint16, bitcast=True).to(tl.int32)
        if out_ptr.dtype.element_ty == tl.bfloat16:
            value = (bits << 16).to(tl.float32, bitcast=True)
        else:
            value = rounded.to(tl.float32)
        away = tl.abs(value - x)
        leaves = (away > limit) & (away > tl.abs(y - x))
        # sign-magnitude: toward zero is bits - 1, away from zero bits + 1; from a zero, the
        # smallest subnormal on x's side
        toward = tl.where((value > x) == (value > 0.0), bits - 1, bits + 1)
        toward = tl.where((bits & 0x7FFF) == 0, tl.where(x < 0.0, 0x8001, 0x0001), toward)
        bits = tl.where(leaves, toward, bits)
        return bits.to(tl.uint16).to(out_ptr.dtype.element_ty, bitcast=True)


@_jit
def _clamp(y, lower, upper):
    # min(max(y, lower), upper) as step_math.h's max_propagate_nan / min_propagate_nan: NaN in
    # either operand propagates, and a tie keeps y, so a value on a bound keeps its bits (-0.0
    # against a bound +0.0 stays -0.0). tl.maximum leaves the operand of a tie unspecified.
    y = tl.where(lower > y, lower, y)
    y = tl.where(lower != lower, lower, y)
    y = tl.where(upper < y, upper, y)
    return tl.where(upper != upper, upper, y)


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


def _table_strides(table):
    """(stride over samples, stride over channels) of a [Bp, Cp] table; 0 where broadcast."""
    if table is None:
        return 0, 0
    rows, cols = table.shape
    return (cols if rows > 1 else 0), (1 if cols > 1 else 0)


def _geometry(x_adv):
    """(sample_size, channel_div, channels): element i is in sample i // sample_size and channel
    (i // channel_div) % channels. Contiguous: a channel is a plane; channels_last: channel_div 1."""
    channels = x_adv.shape[1] if x_adv.dim() >= 2 else 1
    sample_size = x_adv.numel() // x_adv.shape[0]
    return sample_size, (sample_size // channels if x_adv.is_contiguous() else 1), channels


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


@torch.library.triton_op("fastadv_triton::linf_step_out", mutates_args={"out"})
def _linf_step_out(
    x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor,
    eps: torch.Tensor | None, alpha: torch.Tensor | None, lower: torch.Tensor | None,
    upper: torch.Tensor | None, values: list[float], targeted: bool, out: torch.Tensor,
) -> None:  # fmt: skip
    _launch_linf(x_adv, grad, x, (eps, alpha, lower, upper), values, targeted, out)


@torch.library.triton_op("fastadv_triton::linf_project_out", mutates_args={"out"})
def _linf_project_out(
    x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor | None, lower: torch.Tensor | None,
    upper: torch.Tensor | None, values: list[float], out: torch.Tensor,
) -> None:  # fmt: skip
    eps_v, lower_v, upper_v = values
    _launch_linf(x_adv, None, x, (eps, None, lower, upper), [eps_v, 0.0, lower_v, upper_v], False, out)


# ---- L2 (its sizes and grid: _L2_ONE_PROGRAM, _L2_CHUNK, _l2_launch above) ----


@_jit
def _sample_param(ptr, value, stride_b, b, IS_TABLE: tl.constexpr):
    if IS_TABLE:
        return tl.load(ptr + b * stride_b)
    else:
        return tl.cast(value, tl.float32)


@_jit
def _is_infinite(g):
    return tl.abs(g) > 3.4028234663852886e38  # float32's largest finite value


# step_math.h's scales of the second reductions of a sum of squares out of float32's range:
# 2^-80 for an overflow, 2^96 for a sum below 2^-66 (of a perturbation: only when eps < 2^-32).
_OVERFLOW_SCALE = tl.constexpr(8.271806125530277e-25)
_UNDERFLOW_SCALE = tl.constexpr(7.922816251426434e28)
_UNDERFLOW_LIMIT = tl.constexpr(1.3552527156068805e-20)
_UNDERFLOW_EPS = tl.constexpr(2.3283064365386963e-10)


@_jit
def _grad_sums(grad_ptr, offs, mask):
    """The sums over these entries that the direction needs (step_math.h, l2_direction): of
    squares (NaN counts as 0), the count of infinite entries, of squares scaled by 2^-80, and,
    only where the sum is below the underflow limit (else unused), scaled by 2^96."""
    g = _load_float32(grad_ptr, offs, mask, 0.0)  # masked-off lanes add 0
    g = tl.where(g == g, g, 0.0)
    scaled = g * _OVERFLOW_SCALE  # exact
    count = tl.sum(tl.where(_is_infinite(g), 1.0, 0.0), axis=0)
    sum_sq = tl.sum(g * g, axis=0)
    up_sum_sq = (sum_sq * _UNDERFLOW_SCALE) * _UNDERFLOW_SCALE
    if sum_sq < _UNDERFLOW_LIMIT:
        up = g * _UNDERFLOW_SCALE
        up_sum_sq = tl.sum(up * up, axis=0)
    return sum_sq, count, tl.sum(scaled * scaled, axis=0), up_sum_sq


@_jit
def _l2_direction(sum_sq, infinite_count, scaled_sum_sq, up_sum_sq):
    """(scale, inverse_norm, infinite_entry) of step_math.h's L2Direction: d = (g * scale) *
    inverse_norm on finite entries, +-infinite_entry on the k infinite ones (1 / sqrt(k))."""
    overflow = sum_sq > 3.4028234663852886e38
    underflow = sum_sq < _UNDERFLOW_LIMIT
    scale = tl.where(overflow & (infinite_count == 0), _OVERFLOW_SCALE, tl.where(underflow, _UNDERFLOW_SCALE, 1.0))
    norm = tl.sqrt_rn(tl.where(overflow, scaled_sum_sq, tl.where(underflow, up_sum_sq, sum_sq)))
    inverse_norm = tl.where(norm > 0, tl.div_rn(1.0, tl.where(norm > 0, norm, 1.0)), 0.0)
    inverse_norm = tl.where(overflow & (infinite_count > 0), 0.0, inverse_norm)
    infinite_entry = tl.div_rn(1.0, tl.sqrt_rn(tl.maximum(infinite_count, 1.0)))
    infinite_entry = tl.where(overflow & (infinite_count > 0), infinite_entry, 0.0)
    return scale, inverse_norm, infinite_entry


@_jit
def _l2_delta(x_adv_ptr, grad_ptr, x_ptr, offs, mask, scale, inverse_norm, infinite_entry, alpha,
              HAS_GRAD: tl.constexpr, TARGETED: tl.constexpr):  # fmt: skip
    """delta = x_adv + alpha * grad / ||grad|| - x (x_adv - x for projections); 0 off the mask."""
    x_adv = _load_float32(x_adv_ptr, offs, mask, 0.0)
    x = _load_float32(x_ptr, offs, mask, 0.0)
    if HAS_GRAD:
        g = _load_float32(grad_ptr, offs, mask, 0.0)
        # times 1 / ||grad|| (0 for a zero gradient), as the C++ kernels do (step_math.h)
        d = (tl.where(g == g, g, 0.0) * scale) * inverse_norm  # NaN entries count as 0
        d = tl.where(_is_infinite(g), tl.where(g > 0, infinite_entry, -infinite_entry), d)
        # (targeted: minus, not `-d`, as in the L-inf kernel)
        delta = ((x_adv - alpha * d) if TARGETED else (x_adv + alpha * d)) - x
    else:
        delta = x_adv - x
    return tl.where(mask, delta, 0.0), x


@_jit
def _delta_scale(delta_sum_sq, eps):
    """step_math.h's l2_delta_scale: the scale of a perturbation's second reduction (1: none)."""
    underflow = (delta_sum_sq < _UNDERFLOW_LIMIT) & (eps < _UNDERFLOW_EPS)
    scale = tl.where(underflow, _UNDERFLOW_SCALE, 1.0)
    return tl.where(delta_sum_sq > 3.4028234663852886e38, _OVERFLOW_SCALE, scale)


@_jit
def _rescale_factor(scaled_sum_sq, scale, eps):
    """step_math.h's l2_rescale_factor: eps / ||delta|| (1 inside the ball), from the sum of
    squares of delta * scale."""
    scaled_norm = tl.sqrt_rn(scaled_sum_sq)
    scaled_eps = eps * scale
    outside = scaled_norm > scaled_eps
    safe_norm = tl.where(outside, scaled_norm, 1.0)
    factor = tl.where(scale > 1.0, tl.div_rn(scaled_eps, safe_norm), tl.div_rn(eps, safe_norm) * scale)
    return tl.where(outside, factor, 1.0)


@_jit
def _l2_write(out_ptr, x, delta, factor, offs, mask, b, lower_ptr, upper_ptr, lower_sb, lower_sc,
              upper_sb, upper_sc, lower_value, upper_value, channel_div, channels, LOWER_TABLE: tl.constexpr,
              UPPER_TABLE: tl.constexpr):  # fmt: skip
    c = (offs // channel_div) % channels
    lower = _param(lower_ptr, lower_value, lower_sb, lower_sc, b, c, mask, LOWER_TABLE)
    upper = _param(upper_ptr, upper_value, upper_sb, upper_sc, b, c, mask, UPPER_TABLE)
    y = _clamp(x + delta * factor, lower, upper)
    tl.store(out_ptr + offs, _within_budget(y, x, 0.0, out_ptr), mask=mask)


@_jit
def _l2_sample_kernel(
    x_adv_ptr, grad_ptr, x_ptr, out_ptr,
    eps_ptr, alpha_ptr, lower_ptr, upper_ptr,
    eps_sb, alpha_sb, lower_sb, lower_sc, upper_sb, upper_sc,
    eps_value, alpha_value, lower_value, upper_value,
    batch, sample_size, channel_div, channels,
    EPS_TABLE: tl.constexpr, ALPHA_TABLE: tl.constexpr, LOWER_TABLE: tl.constexpr,
    UPPER_TABLE: tl.constexpr, HAS_GRAD: tl.constexpr, TARGETED: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):  # fmt: skip
    # One sample at a time per program, the whole sample in registers between the two norms;
    # the programs take the samples in turn (_l2_launch). A while loop, not range(): Triton
    # 3.6's interpreter cannot take tensor bounds in range() under NumPy >= 2.5.
    idx = tl.arange(0, BLOCK_SIZE)
    mask = idx < sample_size
    b = tl.program_id(0).to(tl.int64)  # 64-bit offsets: tensors may exceed 2^31 elements
    while b < batch:
        offs = b * sample_size + idx
        scale, inverse_norm, infinite_entry = 1.0, 0.0, 0.0
        if HAS_GRAD:
            sum_sq, infinite_count, scaled_sum_sq, up_sum_sq = _grad_sums(grad_ptr, offs, mask)
            scale, inverse_norm, infinite_entry = _l2_direction(sum_sq, infinite_count, scaled_sum_sq, up_sum_sq)
        alpha = _sample_param(alpha_ptr, alpha_value, alpha_sb, b, ALPHA_TABLE)
        delta, x = _l2_delta(x_adv_ptr, grad_ptr, x_ptr, offs, mask, scale, inverse_norm, infinite_entry, alpha,
                             HAS_GRAD, TARGETED)  # fmt: skip
        eps = _sample_param(eps_ptr, eps_value, eps_sb, b, EPS_TABLE)
        delta_sum_sq = tl.sum(delta * delta, axis=0)
        delta_scale = _delta_scale(delta_sum_sq, eps)
        if delta_scale != 1.0:  # rare: a perturbation's norm out of float32's range
            scaled_delta = delta * delta_scale
            delta_sum_sq = tl.sum(scaled_delta * scaled_delta, axis=0)
        factor = _rescale_factor(delta_sum_sq, delta_scale, eps)
        _l2_write(out_ptr, x, delta, factor, offs, mask, b, lower_ptr, upper_ptr, lower_sb, lower_sc,
                  upper_sb, upper_sc, lower_value, upper_value, channel_div, channels, LOWER_TABLE,
                  UPPER_TABLE)  # fmt: skip
        b += tl.num_programs(0)


@_jit
def _l2_chunk_kernel(
    x_adv_ptr, grad_ptr, x_ptr, out_ptr, grad_partials_ptr, delta_partials_ptr,
    eps_ptr, alpha_ptr, lower_ptr, upper_ptr,
    eps_sb, alpha_sb, lower_sb, lower_sc, upper_sb, upper_sc,
    eps_value, alpha_value, lower_value, upper_value,
    sample_size, channel_div, channels, n_chunks, n_work,
    EPS_TABLE: tl.constexpr, ALPHA_TABLE: tl.constexpr, LOWER_TABLE: tl.constexpr,
    UPPER_TABLE: tl.constexpr, HAS_GRAD: tl.constexpr, TARGETED: tl.constexpr,
    STAGE: tl.constexpr, CHUNK: tl.constexpr, CHUNKS_POW2: tl.constexpr,
):  # fmt: skip
    # STAGE 0: partial sum of grad^2; 1: partial sum of delta^2; 2: write. Work item i is chunk
    # i % n_chunks of sample i // n_chunks; its partial sums go to index i. The programs take
    # the items in turn (_l2_launch), and each item sums its sample's partials in the same fixed
    # order, so results are deterministic.
    parts = tl.arange(0, CHUNKS_POW2)
    part_mask = parts < n_chunks
    item = tl.program_id(0).to(tl.int64)  # 64-bit offsets
    while item < n_work:
        b = item // n_chunks
        idx = (item % n_chunks) * CHUNK + tl.arange(0, CHUNK)
        mask = idx < sample_size
        offs = b * sample_size + idx
        eps = _sample_param(eps_ptr, eps_value, eps_sb, b, EPS_TABLE)
        if STAGE == 0:
            sum_sq, infinite_count, scaled_sum_sq, up_sum_sq = _grad_sums(grad_ptr, offs, mask)
            tl.store(grad_partials_ptr + item, sum_sq)
            tl.store(grad_partials_ptr + n_work + item, infinite_count)
            tl.store(grad_partials_ptr + 2 * n_work + item, scaled_sum_sq)
            tl.store(grad_partials_ptr + 3 * n_work + item, up_sum_sq)
        else:
            scale, inverse_norm, infinite_entry = 1.0, 0.0, 0.0
            if HAS_GRAD:
                row = grad_partials_ptr + b * n_chunks + parts
                sum_sq = tl.sum(tl.load(row, mask=part_mask, other=0.0), axis=0)
                infinite_count = tl.sum(tl.load(row + n_work, mask=part_mask, other=0.0), axis=0)
                scaled_sum_sq = tl.sum(tl.load(row + 2 * n_work, mask=part_mask, other=0.0), axis=0)
                # a sample whose total underflows has every chunk below the limit: all computed
                up_sum_sq = tl.sum(tl.load(row + 3 * n_work, mask=part_mask, other=0.0), axis=0)
                scale, inverse_norm, infinite_entry = _l2_direction(sum_sq, infinite_count, scaled_sum_sq,
                                                                    up_sum_sq)  # fmt: skip
            alpha = _sample_param(alpha_ptr, alpha_value, alpha_sb, b, ALPHA_TABLE)
            delta, x = _l2_delta(x_adv_ptr, grad_ptr, x_ptr, offs, mask, scale, inverse_norm, infinite_entry,
                                 alpha, HAS_GRAD, TARGETED)  # fmt: skip
            if STAGE == 1:
                # the chunk's sum of squares of delta, and of delta scaled down and up, each
                # summed again only where the sample's total can need it (step_kernels.cuh's
                # scaled_partials): an overflowing chunk, a chunk below the limit with eps small
                delta_sum_sq = tl.sum(delta * delta, axis=0)
                down_sum_sq = (delta_sum_sq * _OVERFLOW_SCALE) * _OVERFLOW_SCALE
                up_sum_sq = (delta_sum_sq * _UNDERFLOW_SCALE) * _UNDERFLOW_SCALE
                chunk_scale = _delta_scale(delta_sum_sq, eps)
                if chunk_scale != 1.0:
                    scaled = delta * chunk_scale
                    if chunk_scale < 1.0:
                        down_sum_sq = tl.sum(scaled * scaled, axis=0)
                    else:
                        up_sum_sq = tl.sum(scaled * scaled, axis=0)
                tl.store(delta_partials_ptr + item, delta_sum_sq)
                tl.store(delta_partials_ptr + n_work + item, down_sum_sq)
                tl.store(delta_partials_ptr + 2 * n_work + item, up_sum_sq)
            else:
                row = delta_partials_ptr + b * n_chunks + parts
                delta_sum_sq = tl.sum(tl.load(row, mask=part_mask, other=0.0), axis=0)
                delta_scale = _delta_scale(delta_sum_sq, eps)
                # rows: plain, scaled down, scaled up
                pick = tl.where(delta_scale < 1.0, 1, tl.where(delta_scale > 1.0, 2, 0))
                if pick != 0:
                    delta_sum_sq = tl.sum(tl.load(row + pick * n_work, mask=part_mask, other=0.0), axis=0)
                factor = _rescale_factor(delta_sum_sq, delta_scale, eps)
                _l2_write(out_ptr, x, delta, factor, offs, mask, b, lower_ptr, upper_ptr, lower_sb,
                          lower_sc, upper_sb, upper_sc, lower_value, upper_value, channel_div, channels,
                          LOWER_TABLE, UPPER_TABLE)  # fmt: skip
        item += tl.num_programs(0)


def _launch_l2(x_adv, grad, x, tables, values, targeted, out):
    n = x_adv.numel()
    if n == 0:
        return
    batch = x_adv.shape[0]
    sample_size, channel_div, channels = _geometry(x_adv)
    eps_t, alpha_t, lower_t, upper_t = tables
    pointers = [t if t is not None else x_adv for t in tables]
    strides = [
        _table_strides(eps_t)[0], _table_strides(alpha_t)[0],
        *_table_strides(lower_t), *_table_strides(upper_t),
    ]  # fmt: skip
    flags = dict(
        EPS_TABLE=eps_t is not None, ALPHA_TABLE=alpha_t is not None, LOWER_TABLE=lower_t is not None,
        UPPER_TABLE=upper_t is not None, HAS_GRAD=grad is not None, TARGETED=targeted,
    )  # fmt: skip
    grad = grad if grad is not None else x_adv
    plan = _l2_launch(batch, sample_size)
    grid = (plan.programs,)
    if not plan.split:
        _wrap(_l2_sample_kernel)[grid](
            x_adv, grad, x, out, *pointers, *strides, *values, batch, sample_size, channel_div, channels,
            **flags, BLOCK_SIZE=plan.block, num_warps=4 if plan.block <= 1024 else 8,
        )  # fmt: skip
        return
    # rows: of grad^2, sums, counts of infinite entries, sums scaled down and up; of delta^2, sums,
    # sums scaled down and up
    partials = torch.empty((7, plan.n_work), dtype=torch.float32, device=x_adv.device)
    for stage in (0, 1, 2) if flags["HAS_GRAD"] else (1, 2):
        _wrap(_l2_chunk_kernel)[grid](
            x_adv, grad, x, out, partials[0], partials[4], *pointers, *strides, *values,
            sample_size, channel_div, channels, plan.n_chunks, plan.n_work, **flags,
            STAGE=stage, CHUNK=plan.block, CHUNKS_POW2=triton.next_power_of_2(plan.n_chunks), num_warps=8,
        )  # fmt: skip


@torch.library.triton_op("fastadv_triton::l2_step_out", mutates_args={"out"})
def _l2_step_out(
    x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor,
    eps: torch.Tensor | None, alpha: torch.Tensor | None, lower: torch.Tensor | None,
    upper: torch.Tensor | None, values: list[float], targeted: bool, out: torch.Tensor,
) -> None:  # fmt: skip
    _launch_l2(x_adv, grad, x, (eps, alpha, lower, upper), values, targeted, out)


@torch.library.triton_op("fastadv_triton::l2_project_out", mutates_args={"out"})
def _l2_project_out(
    x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor | None, lower: torch.Tensor | None,
    upper: torch.Tensor | None, values: list[float], out: torch.Tensor,
) -> None:  # fmt: skip
    eps_v, lower_v, upper_v = values
    _launch_l2(x_adv, None, x, (eps, None, lower, upper), [eps_v, 0.0, lower_v, upper_v], False, out)


# The backend's four entry points: the registered ops above, called through the shared adapter.
_OPS = StepOps("fastadv_triton")
linf_step_into = _OPS.linf_step_into
linf_project_into = _OPS.linf_project_into
l2_step_into = _OPS.l2_step_into
l2_project_into = _OPS.l2_project_into
