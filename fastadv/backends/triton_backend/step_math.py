"""What the L-inf and L2 kernels share, as csrc/step_math.h is for the C++ kernels: loading in
float32, a parameter from its table or its value, the clamp that keeps a tie's bits, the one
rounding to the output dtype within the budget (@triton.jit helpers); and, on the host, a
parameter table's strides and a batch's geometry."""

import triton.language as tl

from .launch import _jit


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
    # L-inf's rule: y rounded to nearest in the output dtype; for float16 and bfloat16, where that
    # is farther from x than both y and `limit` (eps), the neighbour one unit in the last place
    # toward x instead (step_math.h's within_budget).
    if out_ptr.dtype.element_ty == tl.float32:
        return _to_output_dtype(y, out_ptr)
    else:
        bits, value = _nearest_bits(y, out_ptr)
        away = tl.abs(value - x)
        leaves = (away > limit) & (away > tl.abs(y - x))
        return _moved_toward_x(bits, value, x, leaves, out_ptr)


@_jit
def _toward_x(y, x, out_ptr):
    # L2's rule: y rounded to nearest in the output dtype; for float16 and bfloat16, where that lies
    # beyond y as seen from x (exact comparisons), the neighbour one unit in the last place toward x
    # instead: y rounded toward x (step_math.h's toward_x).
    if out_ptr.dtype.element_ty == tl.float32:
        return _to_output_dtype(y, out_ptr)
    else:
        bits, value = _nearest_bits(y, out_ptr)
        beyond = ((y > x) & (value > y)) | ((y < x) & (value < y))
        return _moved_toward_x(bits, value, x, beyond, out_ptr)


@_jit
def _nearest_bits(y, out_ptr):
    # y rounded to nearest in the 16-bit output dtype: its pattern (int32) and its float32 value
    rounded = _to_output_dtype(y, out_ptr)
    bits = rounded.to(tl.uint16, bitcast=True).to(tl.int32)
    if out_ptr.dtype.element_ty == tl.bfloat16:
        value = (bits << 16).to(tl.float32, bitcast=True)
    else:
        value = rounded.to(tl.float32)
    return bits, value


@_jit
def _moved_toward_x(bits, value, x, move, out_ptr):
    # sign-magnitude: toward zero is bits - 1, away from zero bits + 1; from a zero, the smallest
    # subnormal on x's side
    toward = tl.where((value > x) == (value > 0.0), bits - 1, bits + 1)
    toward = tl.where((bits & 0x7FFF) == 0, tl.where(x < 0.0, 0x8001, 0x0001), toward)
    bits = tl.where(move, toward, bits)
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
