// The per-element attack-step math, written once for the CPU loop and the CUDA kernel.
// It follows the op contract in DESIGN.md to the letter: every operation in float32, in the
// order the reference performs them, so each backend equals the reference bit for bit.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTADV_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTADV_HOST_DEVICE inline
#endif

// The rounding rule's form shared by scalars and SIMD vectors (below) is always inlined: a CPU loop
// compiled for AVX2 or AVX-512 must not call an out-of-line copy compiled for the baseline ISA.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTADV_ROUNDING_INLINE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define FASTADV_ROUNDING_INLINE inline __attribute__((always_inline))
#else
#define FASTADV_ROUNDING_INLINE inline
#endif

// The *_lanes templates below take GCC vectors in the CPU loops, which have a target attribute
// these templates lack: GCC warns that their ABI would differ, but they are always inlined and no
// call of them remains.
#if defined(__GNUC__) && !defined(__CUDACC__) && !defined(__HIPCC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace fastadv {

// The clamps of the contract: a NaN in either operand propagates (as torch.maximum /
// torch.minimum; fmaxf would drop it), and on a tie the first operand, the value being clamped,
// is kept, so that a value on the bound keeps its bits: clamping -0.0 to [+0.0, ...] gives -0.0
// (DESIGN.md, signed zeros). Written as the hardware max/min with the operands swapped (x86's
// maxps(b, a) = b > a ? b : a), plus the NaN test on b: as cheap as the other operand order.
FASTADV_HOST_DEVICE float max_propagate_nan(float a, float b) {
  return (b > a || b != b) ? b : a;
}
FASTADV_HOST_DEVICE float min_propagate_nan(float a, float b) {
  return (b < a || b != b) ? b : a;
}

FASTADV_HOST_DEVICE float abs_value(float v) {
  return v < 0.f ? -v : v;
}

// sign(0) = sign(NaN) = 0: a NaN gradient never moves a pixel.
FASTADV_HOST_DEVICE float sign_or_zero(float g) {
  return static_cast<float>((g > 0.f) - (g < 0.f));
}

// Projection onto the L-inf ball around x, then onto [lower, upper].
FASTADV_HOST_DEVICE float linf_project_value(float y, float x, float eps, float lower, float upper) {
  y = min_propagate_nan(max_propagate_nan(y, x - eps), x + eps);
  return min_propagate_nan(max_propagate_nan(y, lower), upper);
}

// alpha * sign is exact, so a fused multiply-add here rounds exactly like the reference. A targeted
// step negates the sign; (-alpha) * s == alpha * (-s) exactly, and negating alpha is loop-invariant
// (a branch on `targeted` per element keeps gcc from vectorizing the CPU loop).
FASTADV_HOST_DEVICE float linf_step_value(float x_adv, float grad, float x, float eps, float alpha,
                                          float lower, float upper, bool targeted) {
  const float step = targeted ? -alpha : alpha;
  return linf_project_value(x_adv + step * sign_or_zero(grad), x, eps, lower, upper);
}

// The L-inf step and projection above on whole SIMD vectors (F a GCC vector of floats, as in
// l2_grad_entry_lanes; comparisons give lane masks, `?:` a blend): lane for lane the scalar forms'
// results, bit for bit, in fewer instructions. The CPU loops run them on the 16-bit dtypes, one
// pass from the loads to the rounded store (csrc/cpu/step_cpu_loops.h).

// |v| for the comparisons of the vector forms and of the rounding rule below.
template <typename F>
FASTADV_ROUNDING_INLINE F lanes_abs(F v) {
  if constexpr (std::is_arithmetic_v<F>) {
    return v < F{} ? -v : v;  // abs_value: -0 and NaN stay as they are (only compared below)
  } else {
    // On a vector the sign bit cleared, one AND instead of a compare, a negation and a blend. It
    // differs from the above only in the sign of a zero or a NaN, neither of which changes a
    // comparison.
    using Mask = decltype(v < v);
    return reinterpret_cast<F>(reinterpret_cast<Mask>(v) & (Mask{} + 0x7FFFFFFF));
  }
}

// alpha * sign_or_zero(g) with two blends: the step negated where g's sign bit is set (one blend on
// that bit, -step flips only the sign bit), kept where g is nonzero and not NaN (g < 0 | g > 0, one
// ordered not-equal compare), else the step's +0 product, a zero with the step's sign
// (loop-invariant, as are -step and the zero). step: alpha, negated when targeted (loop-invariant,
// as in linf_step_value).
// On 512-bit vectors "nonzero and not NaN" is |g| > 0 instead (the same lanes: false for ±0 and NaN):
// gcc 12 turned the select on the OR of two compares, next to the other two selects, into scalar code
// (a vcomiss and a setcc per lane), and the AVX-512 build's 16-bit L-inf step ran 3x slower than the
// AVX2 build's on the AMD EPYC (Zen 5) host. On 256-bit vectors gcc makes the OR one vcmpneq_oqps,
// one instruction fewer than the AND and the compare.
// The negation where g's sign bit is set is, on 512-bit vectors, step XOR (g AND the sign bit): one
// vpternlogd, where the blend took a compare into a mask and the blend (AVX2's vblendvps reads the
// sign bit itself, one instruction).
template <typename F>
FASTADV_ROUNDING_INLINE F signed_step_lanes(F g, F step) {
  using Mask = decltype(g < g);
  const Mask sign_bit = Mask{} + (-0x7FFFFFFF - 1);
  const F zero_step = reinterpret_cast<F>(reinterpret_cast<Mask>(step) & sign_bit);
  if constexpr (sizeof(F) >= 64) {
    const F flipped = reinterpret_cast<F>(reinterpret_cast<Mask>(step) ^ (reinterpret_cast<Mask>(g) & sign_bit));
    return lanes_abs(g) > F{} ? flipped : zero_step;
  } else {
    const F flipped = reinterpret_cast<Mask>(g) < Mask{} ? -step : step;
    return (g < F{}) | (g > F{}) ? flipped : zero_step;
  }
}

// linf_project_value: `b > y ? b : y` is max_propagate_nan(y, b) wherever the bound b is not NaN
// (a NaN y stays: b > NaN is false), and gcc makes it one vmaxps, where the NaN test of b cost a
// compare, an OR and a blend per clamp. eps, lower and upper are never NaN (the ops refuse them);
// x - eps and x + eps are NaN exactly where x is, and there the scalar chain ends at x + eps (its
// second clamp keeps the NaN bound, the clamps to [lower, upper] keep a NaN).
// kNanX false leaves out that last select (a compare and a blend per vector): where x is NaN the
// result is then y clamped to [lower, upper] instead of the NaN x + eps, and elsewhere it is the same.
// Only for a store that tests x for NaN itself: the bfloat16 loops store every NaN as 0x7FC0, so
// they test y and x together at the rounding (one unordered compare instead of y's own).
template <bool kNanX = true, typename F>
FASTADV_ROUNDING_INLINE F linf_project_lanes(F y, F x, F eps, F lower, F upper) {
  const F below = x - eps, above = x + eps;
  y = below > y ? below : y;
  y = above < y ? above : y;
  y = lower > y ? lower : y;
  y = upper < y ? upper : y;
  if constexpr (kNanX) {
    return x != x ? above : y;
  } else {
    return y;
  }
}

template <bool kNanX = true, typename F>
FASTADV_ROUNDING_INLINE F linf_step_lanes(F x_adv, F grad, F x, F eps, F step, F lower, F upper) {
  return linf_project_lanes<kNanX>(x_adv + signed_step_lanes(grad, step), x, eps, lower, upper);
}

// ---- L2 (per sample b; norms over all non-batch elements, accumulated in float32) ----
// d = grad_b / ||grad_b|| (0 where the norm is 0; NaN entries count as 0; its limit
// sign(g_i) / sqrt(k) on the k infinite entries when there are any), negated when targeted;
// delta = (x_adv + alpha * d) - x, rescaled by eps / ||delta|| when ||delta|| > eps; then clamp.

constexpr float kFloatMax = 0x1.fffffep+127f;
// Sums of squares are taken in float32, whose range a norm can leave at either end. The common
// case pays nothing: a sample's first sum decides, and only a sum outside [kL2UnderflowLimit,
// kFloatMax] takes a second reduction of the same entries times an exact power of two.
// Overflow (entries from about 1.8e19 on): 2^-80 brings them back; the scaled squares sum to at
// most 2^96 per entry, finite for any sample that fits in memory.
constexpr float kL2OverflowScale = 0x1p-80f;
// Underflow (entries about 1e-20 and below, as saturated cross-entropy gives on very confident
// samples, down to the smallest subnormal 2^-149): 2^96 makes every nonzero square a normal
// float32 (at least 2^-106), so any nonzero vector has a norm to full precision; a sum below
// 2^-66 scales to below 2^126, so the second sum cannot overflow. Above the limit, squares that
// lose bits as subnormals (below 2^-126) lose at most 2^-150 each: negligible next to 2^-66.
constexpr float kL2UnderflowScale = 0x1p+96f;
constexpr float kL2UnderflowLimit = 0x1p-66f;
// A perturbation whose sum of squares is below the limit has a norm below about 2^-33: it can
// exceed eps, and so needs its exact norm, only when eps is below 2^-32.
constexpr float kL2UnderflowEps = 0x1p-32f;

// The scale of a gradient's second reduction (1: none): its first sum of squares is infinite, or
// below the underflow limit (a zero sum included: it may be entries whose squares vanished).
FASTADV_HOST_DEVICE float l2_grad_scale(float sum_sq) {
  return sum_sq > kFloatMax ? kL2OverflowScale : (sum_sq < kL2UnderflowLimit ? kL2UnderflowScale : 1.f);
}

// The same for a perturbation delta in the eps ball of eps: below the limit only where it matters.
// A NaN sum (a NaN x_adv) takes none: its factor is 1 either way.
FASTADV_HOST_DEVICE float l2_delta_scale(float sum_sq, float eps) {
  if (sum_sq > kFloatMax) return kL2OverflowScale;
  return sum_sq < kL2UnderflowLimit && eps < kL2UnderflowEps ? kL2UnderflowScale : 1.f;
}

// A gradient entry as it enters the norm and the direction: NaN counts as 0. The same expression
// on one element (F float) or on a whole SIMD vector (F a GCC vector of floats: the CPU loops' sums,
// where the comparison gives a lane mask and `?:` a blend).
template <typename F>
FASTADV_ROUNDING_INLINE F l2_grad_entry_lanes(F g) {
  return g == g ? g : F{};
}
FASTADV_HOST_DEVICE float l2_grad_entry(float g) {
  return l2_grad_entry_lanes(g);
}

FASTADV_HOST_DEVICE bool is_infinite(float g) {
  return abs_value(g) > kFloatMax;
}

// The second reduction, run only for a sample whose sum of squares is out of range (scale from
// l2_grad_scale): its count of infinite entries (overflow only) and its sum of scaled squares.
FASTADV_HOST_DEVICE float l2_infinite_count(float g) {
  return is_infinite(g) ? 1.f : 0.f;
}
FASTADV_HOST_DEVICE float l2_scaled_square(float v, float scale) {
  const float s = l2_grad_entry(v) * scale;
  return s * s;
}

// 1 / ||grad||, or 0 for a zero gradient (which then does not move the sample). The kernels
// multiply by it once per element instead of dividing: a division per element cost as much as the
// loads in the CPU loop; the result differs from the reference's g / ||g|| by at most one ulp.
FASTADV_HOST_DEVICE float l2_inverse_norm(float grad_norm) {
  return grad_norm > 0.f ? 1.f / grad_norm : 0.f;
}

// What the direction of one sample needs: d_i = (g_i * scale) * inverse_norm on finite entries,
// +-infinite_entry on infinite ones.
struct L2Direction {
  float scale;           // 1, or l2_grad_scale's when the sum of squares left float32's range
  float inverse_norm;    // 1 / ||scale * g||; 0 for a zero gradient or one with infinite entries
  float infinite_entry;  // 1 / sqrt(k) for k > 0 infinite entries, else 0
};

// From the sample's sum of squares; when that is out of range (l2_grad_scale), from its count of
// infinite entries (0 unless it overflowed) and its sum of squares scaled by l2_grad_scale.
FASTADV_HOST_DEVICE L2Direction l2_direction(float sum_sq, float infinite_count, float scaled_sum_sq) {
  const float scale = l2_grad_scale(sum_sq);
  if (scale == 1.f) return {1.f, l2_inverse_norm(sqrtf(sum_sq)), 0.f};
  if (infinite_count > 0.f) return {1.f, 0.f, 1.f / sqrtf(infinite_count)};
  return {scale, l2_inverse_norm(sqrtf(scaled_sum_sq)), 0.f};
}

FASTADV_HOST_DEVICE float l2_direction_entry(float g, L2Direction dir) {
  const float finite = (l2_grad_entry(g) * dir.scale) * dir.inverse_norm;
  return is_infinite(g) ? (g > 0.f ? dir.infinite_entry : -dir.infinite_entry) : finite;
}

// The same for a sample whose sum of squares is in range (no infinite entry, scale 1), given its
// inverse norm: the CPU loop's fast path (the selects above cost it time), equal bit for bit.
FASTADV_HOST_DEVICE float l2_direction_entry(float g, float inverse_norm) {
  return l2_grad_entry(g) * inverse_norm;
}

// The unscaled perturbation of one element after the gradient step (Dir: L2Direction, or the
// inverse norm of a sample with a finite sum of squares).
// l2_step_delta_lanes: the same on one element or a SIMD vector (F as in l2_grad_entry_lanes), given
// the direction entry d and the signed step.
template <typename F>
FASTADV_ROUNDING_INLINE F l2_step_delta_lanes(F x_adv, F d, F x, float step) {
  return (x_adv + step * d) - x;
}
template <typename Dir>
FASTADV_HOST_DEVICE float l2_step_delta(float x_adv, float g, float x, Dir dir, float alpha, bool targeted) {
  const float d = l2_direction_entry(g, dir);
  const float step = targeted ? -alpha : alpha;  // exact, and loop-invariant (see linf_step_value)
  return l2_step_delta_lanes(x_adv, d, x, step);
}

// The factor eps / ||delta|| that brings delta back into the eps ball (1 inside it), from
// scaled_norm = ||delta * scale|| (scale from l2_delta_scale). With scale 1 it is eps / norm. For an
// overflow (scale 2^-80, ||delta|| >= 2^64) eps * scale may lose bits when eps < 2^-46, which
// cannot change the comparison, and (eps / scaled_norm) * scale keeps the factor's bits down to
// float32's normal range; for an underflow (scale 2^96, eps < 2^-32) eps * scale is exact.
FASTADV_HOST_DEVICE float l2_rescale_factor(float scaled_norm, float scale, float eps) {
  const float scaled_eps = eps * scale;
  if (!(scaled_norm > scaled_eps)) return 1.f;
  // one division either way (a second division site made nvcc spill in l2_sample_kernel)
  const bool up = scale > 1.f;
  return ((up ? scaled_eps : eps) / scaled_norm) * (up ? 1.f : scale);
}

FASTADV_HOST_DEVICE float l2_output(float x, float delta, float factor, float lower, float upper) {
  return min_propagate_nan(max_propagate_nan(x + delta * factor, lower), upper);
}

// l2_output on whole SIMD vectors (F a GCC vector of floats, as in l2_grad_entry_lanes; factor a
// float or such a vector): lane for lane its result, bit for bit. lower and upper are never NaN
// (the ops refuse them), so `b > y ? b : y` is max_propagate_nan(y, b) (a NaN y stays: b > NaN is
// false; a tie keeps y), one vmaxps without the NaN test of b (as in linf_project_lanes). Used by
// the float32 loop that writes one sample while it sums the next one's gradient, and by the
// 16-bit write from registers.
template <typename F, typename S>
FASTADV_ROUNDING_INLINE F l2_output_lanes(F x, F delta, S factor, F lower, F upper) {
  F y = x + delta * factor;
  y = lower > y ? lower : y;
  return upper < y ? upper : y;
}

// ---- Rounding to a 16-bit output dtype (float16, bfloat16) within the budget ----
// Nearest rounding of the float32 result y can carry it past the ball's edge (eps 0.1 became
// 0.1016 in float16). So: out = nearest(y), and then
// - L-inf (bits_within_budget): when out is farther from x than both y and eps (float32
//   comparisons), out becomes its neighbour one unit in the last place toward x;
// - L2 (bits_toward_x): when out lies beyond y as seen from x (y > x and out > y, or y < x and
//   out < y: exact comparisons), the same neighbour. That is y rounded toward x, exactly.
// x is representable and y lies between x and out, so the neighbour lies between x and y:
// |out - x| <= |y - x|, within the ball, and within [lower, upper] whenever the bounds are
// representable. float32 outputs are stored as they are (PGD then equals torchattacks bit for bit).

// The rule on one element (F float, U uint32_t holding the 16-bit pattern) or on a whole SIMD
// vector of elements at once (F, U: GCC vectors of float and uint32_t, csrc/cpu/step_simd.h): the
// same expression serves both. Comparisons give a bool or a lane mask, `?:` selects per lane, F{}
// and U{} are zeros, and constants broadcast; no branch, so the CPU loops run it on whole vectors
// (AVX-512 masks, AVX2 blends, SSE2 and/andnot) and the CUDA kernel as predicated selects.
// The step toward x is bits - 1 (toward zero) when `rounded` lies on the same side of x as of zero,
// else bits + 1; from a zero it goes to the smallest subnormal on x's side (0x0001 or 0x8001).
template <typename F, typename U>
FASTADV_ROUNDING_INLINE U bits_one_toward_x(U bits, F rounded, F x) {
  const U moved = ((rounded > x) == (rounded > F{})) ? bits - 1u : bits + 1u;
  const U from_zero = x < F{} ? U{} + 0x8001u : U{} + 0x0001u;
  return (bits & 0x7FFFu) == 0u ? from_zero : moved;
}

// L-inf's rule: away > limit and away > |y - x| decide whether nearest(y) left the budget (NaN
// compares false: a NaN stays as it is). The CPU loops run bits_within_budget_vector below, its
// equal on vectors.
template <typename F, typename U>
FASTADV_ROUNDING_INLINE U bits_within_budget_lanes(U bits, F rounded, F y, F x, F limit) {
  const F away = lanes_abs(rounded - x);
  const auto leaves = (away > limit) & (away > lanes_abs(y - x));
  return leaves ? bits_one_toward_x(bits, rounded, x) : bits;
}

// L2's rule (DESIGN.md, "Rounding to the output dtype"), in the same form: nearest(y) moved one unit
// toward x where it lies beyond y as seen from x, that is where y lies strictly between x and
// rounded (l2_beyond: a min, a max and two compares). The comparisons are exact (rounded and y are
// float32 values), so the result is y rounded toward x even where the float32 differences
// |rounded - x| and |y - x| of the L-inf rule round to one value (x 0.0035 and y 0.000337 in
// float16: nearest(y) lay within 2^-33 beyond y, and float32 differences near 0.003 have a unit of
// 2^-32). NaN compares false, so a NaN stays as it is; y == x is representable, so nearest(y) is y.
template <typename F>
FASTADV_ROUNDING_INLINE auto l2_beyond(F rounded, F y, F x) {
  const F low = x < rounded ? x : rounded, high = x > rounded ? x : rounded;
  return (low < y) & (y < high);
}

template <typename F, typename U>
FASTADV_ROUNDING_INLINE U bits_toward_x_lanes(U bits, F rounded, F y, F x) {
  return l2_beyond(rounded, y, x) ? bits_one_toward_x(bits, rounded, x) : bits;
}

// L-inf's rule on whole vectors with integer operations (the CPU loops; F, U: GCC vectors of float
// and uint32_t), lane for lane equal to bits_within_budget_lanes, without a per-case blend:
// bits_within_budget_vector = bits - budget_move_vector, where the move (toward_x_move) is
// - 0 where the rule does not move: leaves is away > max(limit, |y - x|) (limit is never NaN; a NaN
//   |y - x| or away compares false);
// - +unit (toward zero) where rounded - x and rounded have the same sign, else -unit: where the rule
//   moves, rounded != x, so rounded - x is nonzero and its sign says whether rounded > x. A rounded
//   zero needs no case of its own: y lies strictly between x and rounded there, so rounded (which
//   keeps y's sign) has x's sign, and subtracting -1 from 0x0000 or 0x8000 gives the smallest
//   subnormal on x's side.
// With a unit of 1 the move is -1, 0 or +1 in every 32-bit lane, so a loop may also apply it to the
// 16-bit patterns after narrowing it (vpmovdw's truncation, or the AVX2 float16 loop's signed
// saturating pack, exact on these values): the result never wraps, since the rule never moves a NaN
// (0x7C01 to 0x7FFF, 0xFC01 to 0xFFFF) nor +0 toward zero.
// `unit` is the move's size: 1 for 16-bit patterns in the low halves of the lanes, 0x10000 for
// bfloat16 patterns kept in the upper halves, where they are the float32 value (the bfloat16 L-inf
// loop's pairs, csrc/cpu/step_simd.h); its negation asks for the negated move.
// On 512-bit vectors the move is an arithmetic shift of the signs' XOR (0 or all ones), an AND-OR
// with the unit (a power of two there) and a select on `leaves` that gcc folds into the OR as a
// zero-masking: three instructions after the XOR, where a compare into a mask, a blend of -unit and
// +unit, the mask widened to a vector and an AND took four. Where the 16-bit L-inf step is bound by
// its instructions (Zen 4, in cache) that made it 1.11x (float16) and 1.06x (bfloat16) faster, with
// signed_step_lanes' XOR. On narrower
// vectors the blend reads the XOR's sign bit itself (vblendvps) and the mask is already a vector, so
// the blend form is the shorter one there (the shift form made the AVX2 build's L-inf step 0.88x and
// 0.92x as fast).
template <typename U, typename F, typename Mask>
FASTADV_ROUNDING_INLINE U toward_x_move(F from_x, F rounded, Mask leaves, uint32_t unit) {
  const Mask opposite_sides = reinterpret_cast<Mask>(from_x) ^ reinterpret_cast<Mask>(rounded);
  if constexpr (sizeof(F) >= 64) {
    const U move = (reinterpret_cast<U>(opposite_sides >> 31) & (U{} - unit)) | unit;
    return leaves ? move : U{};
  } else {
    return reinterpret_cast<U>(leaves) & (opposite_sides < Mask{} ? U{} - unit : U{} + unit);
  }
}

template <typename F, typename U>
FASTADV_ROUNDING_INLINE U budget_move_vector(F rounded, F y, F x, F limit, uint32_t unit) {
  const F from_x = rounded - x;
  const F dist = lanes_abs(y - x);
  return toward_x_move<U>(from_x, rounded, lanes_abs(from_x) > (limit > dist ? limit : dist), unit);
}

// bits moved by the rule. Narrower vectors add the negated move instead of subtracting the move: with
// a unit of 1, gcc makes the select of +1 and -1 a compare and an OR, but the select of -1 and +1 one
// vblendvps (the AVX2 build's bfloat16 L-inf step was also 0.97x as fast with the subtraction: it
// spilled two more registers).
template <typename F, typename U>
FASTADV_ROUNDING_INLINE U bits_within_budget_vector(U bits, F rounded, F y, F x, F limit, uint32_t unit = 1u) {
  if constexpr (sizeof(F) >= 64) {
    return bits - budget_move_vector<F, U>(rounded, y, x, limit, unit);
  } else {
    return bits + budget_move_vector<F, U>(rounded, y, x, limit, 0u - unit);
  }
}

// L2's rule (bits_toward_x_lanes) as a move in the same 32-bit lanes, for the loops that round to
// nearest first (bfloat16 patterns kept in float32 lanes, float16 without F16C): -1, 0 or +1, lane
// for lane bits_toward_x_lanes(bits, ...) == bits - move. Where the rule moves, rounded - x has the
// sign of y - x (nonzero), which toward_x_move reads as for L-inf. On narrower vectors the move is
// the shift form with an AND on the mask: the select of -1 and +1 (toward_x_move's) would compare
// against a zero vector, which the AVX2 16-bit writes had to keep in a register of their own.
template <typename F>
FASTADV_ROUNDING_INLINE auto l2_budget_move_vector(F rounded, F y, F x) {
  using U = decltype(y < y);
  const F from_x = rounded - x;
  const U leaves = l2_beyond(rounded, y, x);
  if constexpr (sizeof(F) >= 64) {
    return toward_x_move<U>(from_x, rounded, leaves, 1u);
  } else {
    return leaves & (((reinterpret_cast<U>(from_x) ^ reinterpret_cast<U>(rounded)) >> 31) | 1);
  }
}

// The stored bits of a 16-bit output element: `bits` is nearest(y), `rounded` its value.
FASTADV_HOST_DEVICE uint16_t bits_within_budget(uint16_t bits, float rounded, float y, float x, float limit) {
  return static_cast<uint16_t>(bits_within_budget_lanes<float, uint32_t>(bits, rounded, y, x, limit));
}

// L2's: y rounded toward x.
FASTADV_HOST_DEVICE uint16_t bits_toward_x(uint16_t bits, float rounded, float y, float x) {
  return static_cast<uint16_t>(bits_toward_x_lanes<float, uint32_t>(bits, rounded, y, x));
}

// The same for an element of type T (float: stored as it is; c10::Half or c10::BFloat16, whose
// bits are the member x). `rounded` is nearest(y) in T.
template <typename T>
FASTADV_HOST_DEVICE T within_budget(T rounded, float rounded_value, float y, float x, float limit) {
  if constexpr (sizeof(T) == 2) {
    return T(bits_within_budget(rounded.x, rounded_value, y, x, limit), T::from_bits());
  } else {
    return rounded;
  }
}

// L2's rule for an element of type T, as within_budget.
template <typename T>
FASTADV_HOST_DEVICE T toward_x(T rounded, float rounded_value, float y, float x) {
  if constexpr (sizeof(T) == 2) {
    return T(bits_toward_x(rounded.x, rounded_value, y, x), T::from_bits());
  } else {
    return rounded;
  }
}

// A step parameter: one value for every element, or a float32 table of shape [Bp, Cp]
// (Bp in {1, B}, Cp in {1, C}) read at (sample, channel); a broadcast dim has stride 0.
struct StepParam {
  const float* table;  // nullptr: use `value`
  int64_t stride_b;
  int64_t stride_c;
  float value;

  FASTADV_HOST_DEVICE bool varies() const { return table != nullptr; }
  FASTADV_HOST_DEVICE float at(int64_t b, int64_t c) const {
    return table ? table[b * stride_b + c * stride_c] : value;
  }
};

struct StepParams {
  StepParam eps, alpha, lower, upper;  // alpha is unused by the projection
};

// Where the element at memory offset i sits: sample b = i / sample_size and channel
// c = (i / channel_div) % channels. channel_div is the spatial size for contiguous tensors and 1
// for channels_last, where the channel is the fastest-moving index.
struct Geometry {
  int64_t sample_size;
  int64_t channel_div;
  int64_t channels;
  bool needs_sample;   // some parameter differs between samples
  bool needs_channel;  // some parameter differs between channels
};

}  // namespace fastadv
