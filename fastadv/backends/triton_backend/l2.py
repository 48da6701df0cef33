"""The L2 step and projection: per-sample norms, in one program per sample when it fits
(_l2_sample_kernel) or as a split reduction over chunks in three launches (_l2_chunk_kernel);
their grid (_l2_launch) and launcher (_launch_l2)."""

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .launch import _jit, _wrap
from .step_math import _clamp, _geometry, _load_float32, _param, _table_strides, _toward_x

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
    tl.store(out_ptr + offs, _toward_x(y, x, out_ptr), mask=mask)


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
