// Whole-vector conversions between float32 and the 16-bit output dtypes for the CPU loops, and the
// rounding rule (step_math.h's bits_within_budget_vector) on whole vectors. Included by
// step_cpu_loops.h inside its anonymous namespace, once per ISA build: kLanes float32 lanes per
// vector, 16 on AVX-512, 8 on AVX2, 4 (SSE2, or whatever the compiler makes of 16-byte vectors)
// in the baseline build. The vectors are GCC vector extensions, so the rule is step_math.h's own
// expression instantiated on vectors (comparisons give lane masks, `?:` is a blend); float16 goes
// through F16C / AVX-512F where the build has them and through the branch-free bit conversions of
// step_cpu_loops.h's load_float / store_float, written on vectors, in the baseline build; bfloat16
// rounds by integer arithmetic. Every function here equals its scalar counterpart bit for bit
// (tests/ops/test_cpu_builds.py runs each build on every 16-bit pattern and on rounding edges).
#pragma once

// The GCC vectors below pass through step_math.h's always-inlined templates, which have no target
// attribute of their own: GCC warns that their ABI would differ, but no call of them remains.
#pragma GCC diagnostic ignored "-Wpsabi"

constexpr int kLanes = FASTADV_CPU_HALF_LANES > 0 ? FASTADV_CPU_HALF_LANES : 4;

typedef float FloatLanes __attribute__((vector_size(4 * kLanes)));
typedef uint32_t BitsLanes __attribute__((vector_size(4 * kLanes)));
typedef uint16_t Bits16Lanes __attribute__((vector_size(2 * kLanes)));

template <typename T>
constexpr bool kIs16Bit = std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>;

FASTADV_CPU_TARGET inline FloatLanes load_lanes(const float* p) {
  FloatLanes v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

FASTADV_CPU_TARGET inline void store_lanes(float* p, FloatLanes v) {
  std::memcpy(p, &v, sizeof(v));
}

// v in every lane, its sign of zero included (FloatLanes{} + v would make -0.0 +0.0).
FASTADV_CPU_TARGET inline FloatLanes splat_lanes(float v) {
  FloatLanes r;
  for (int k = 0; k < kLanes; ++k) r[k] = v;
  return r;
}

// kLanes 16-bit patterns, zero-extended to 32-bit lanes, and back (the upper halves are zero, so
// the narrowing is an unsigned saturating pack). Intrinsics where the build has them: gcc made
// __builtin_convertvector two 128-bit vpmovzxwd and an insert per load, and a mask, a pack and a
// permute per store (a third of the instructions of the bfloat16 L-inf loop).
template <typename T>
FASTADV_CPU_TARGET inline BitsLanes load_bits(const T* p) {
#if FASTADV_CPU_HALF_LANES >= 16
  return reinterpret_cast<BitsLanes>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#elif FASTADV_CPU_HALF_LANES >= 8
  return reinterpret_cast<BitsLanes>(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#else
  Bits16Lanes v;
  std::memcpy(&v, p, sizeof(v));
  return __builtin_convertvector(v, BitsLanes);
#endif
}

template <typename T>
FASTADV_CPU_TARGET inline void store_bits(T* p, BitsLanes bits) {
#if FASTADV_CPU_HALF_LANES >= 16
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(reinterpret_cast<__m512i>(bits)));
#elif FASTADV_CPU_HALF_LANES >= 8
  const __m256i b = reinterpret_cast<__m256i>(bits);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1)));
#else
  const Bits16Lanes v = __builtin_convertvector(bits, Bits16Lanes);
  std::memcpy(p, &v, sizeof(v));
#endif
}

// The float32 values of 16-bit patterns (load_float on every lane).
template <typename T>
FASTADV_CPU_TARGET inline FloatLanes widen_bits(BitsLanes bits) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return reinterpret_cast<FloatLanes>(bits << 16);
  } else {
#if FASTADV_CPU_HALF_LANES >= 16
    return reinterpret_cast<FloatLanes>(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(reinterpret_cast<__m512i>(bits))));
#elif FASTADV_CPU_HALF_LANES >= 8
    const __m256i b = reinterpret_cast<__m256i>(bits);
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
    return reinterpret_cast<FloatLanes>(_mm256_cvtph_ps(packed));
#else
    const BitsLanes w = bits << 16;
    const BitsLanes sign = w & 0x80000000u;
    const BitsLanes two_w = w + w;
    const FloatLanes normalized = reinterpret_cast<FloatLanes>((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const FloatLanes denormalized = reinterpret_cast<FloatLanes>((two_w >> 17) | (126u << 23)) - 0.5f;
    return reinterpret_cast<FloatLanes>(
        sign | (two_w < (1u << 27) ? reinterpret_cast<BitsLanes>(denormalized) : reinterpret_cast<BitsLanes>(normalized)));
#endif
  }
}

// kLanes elements of an input as float32 (float32 is read as it is).
template <typename T>
FASTADV_CPU_TARGET inline FloatLanes load_widened(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return load_lanes(p);
#if FASTADV_CPU_HALF_LANES >= 16
  } else if constexpr (std::is_same_v<T, c10::Half>) {
    return reinterpret_cast<FloatLanes>(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#elif FASTADV_CPU_HALF_LANES >= 8
  } else if constexpr (std::is_same_v<T, c10::Half>) {
    return reinterpret_cast<FloatLanes>(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#endif
  } else {
    return widen_bits<T>(load_bits(p));
  }
}

// nearest(y) in T: its bits (zero-extended) and its float32 value (store_float, then load_float).
struct RoundedLanes {
  BitsLanes bits;
  FloatLanes value;
};

template <typename T>
FASTADV_CPU_TARGET inline RoundedLanes round_lanes(FloatLanes y) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const BitsLanes w = reinterpret_cast<BitsLanes>(y);
    const BitsLanes nearest = (w + 0x7FFFu + ((w >> 16) & 1u)) >> 16;
    const BitsLanes bits = y != y ? BitsLanes{} + 0x7FC0u : nearest;  // NaN -> 0x7FC0, as c10
    return {bits, reinterpret_cast<FloatLanes>(bits << 16)};
  } else {
#if FASTADV_CPU_HALF_LANES >= 16
    const __m256i packed = _mm512_cvtps_ph(reinterpret_cast<__m512>(y), _MM_FROUND_TO_NEAREST_INT);
    return {reinterpret_cast<BitsLanes>(_mm512_cvtepu16_epi32(packed)),
            reinterpret_cast<FloatLanes>(_mm512_cvtph_ps(packed))};
#elif FASTADV_CPU_HALF_LANES >= 8
    const __m128i packed = _mm256_cvtps_ph(reinterpret_cast<__m256>(y), _MM_FROUND_TO_NEAREST_INT);
    return {reinterpret_cast<BitsLanes>(_mm256_cvtepu16_epi32(packed)),
            reinterpret_cast<FloatLanes>(_mm256_cvtph_ps(packed))};
#else
    // store_float<c10::Half> on every lane (see there).
    const BitsLanes w = reinterpret_cast<BitsLanes>(y);
    FloatLanes base = (reinterpret_cast<FloatLanes>(w & 0x7FFFFFFFu) * 0x1.0p+112f) * 0x1.0p-110f;
    const BitsLanes shl1_w = w + w;
    const BitsLanes sign = w & 0x80000000u;
    BitsLanes bias = shl1_w & 0xFF000000u;
    bias = bias < 0x71000000u ? BitsLanes{} + 0x71000000u : bias;
    base = reinterpret_cast<FloatLanes>((bias >> 1) + 0x07800000u) + base;
    const BitsLanes b = reinterpret_cast<BitsLanes>(base);
    const BitsLanes nonsign = ((b >> 13) & 0x00007C00u) + (b & 0x00000FFFu);
    const BitsLanes bits = (sign >> 16) | (shl1_w > 0xFF000000u ? BitsLanes{} + 0x7E00u : nonsign);
    return {bits, widen_bits<T>(bits)};
#endif
  }
}

// kLanes float32 results y stored as T: float32 as they are, a 16-bit dtype rounded within the budget
// (step_math.h's rule; x: the inputs' x in float32; limit: eps for L-inf, 0 for L2).
template <typename T>
FASTADV_CPU_TARGET inline void store_output_lanes(T* out, FloatLanes y, FloatLanes x, FloatLanes limit) {
  if constexpr (std::is_same_v<T, float>) {
    store_lanes(out, y);
  } else {
    const RoundedLanes r = round_lanes<T>(y);
    store_bits(out, bits_within_budget_vector(r.bits, r.value, y, x, limit));
  }
}

// Two vectors of results (2 * kLanes elements from out) stored as T, each as store_output_lanes
// stores it. The AVX2 build narrows the pair at once: one pack and one permute for 16 elements instead
// of an extract and a pack per 8; float16 applies the rule's moves (step_math.h's budget_move_vector,
// -1, 0 or +1 per lane, narrowed by a signed saturating pack, which keeps them) to vcvtps2ph's
// 16-bit patterns, without widening those to 32-bit lanes: negated and added, as
// bits_within_budget_vector applies them on these vectors.
template <typename T>
FASTADV_CPU_TARGET inline void store_output_pair(T* out, FloatLanes y0, FloatLanes y1, FloatLanes x0, FloatLanes x1,
                                                 FloatLanes limit) {
#if FASTADV_CPU_HALF_LANES == 8
  if constexpr (std::is_same_v<T, c10::Half>) {
    const __m128i p0 = _mm256_cvtps_ph(reinterpret_cast<__m256>(y0), _MM_FROUND_TO_NEAREST_INT);
    const __m128i p1 = _mm256_cvtps_ph(reinterpret_cast<__m256>(y1), _MM_FROUND_TO_NEAREST_INT);
    const BitsLanes m0 = budget_move_vector<FloatLanes, BitsLanes>(reinterpret_cast<FloatLanes>(_mm256_cvtph_ps(p0)),
                                                                   y0, x0, limit, 0u - 1u);
    const BitsLanes m1 = budget_move_vector<FloatLanes, BitsLanes>(reinterpret_cast<FloatLanes>(_mm256_cvtph_ps(p1)),
                                                                   y1, x1, limit, 0u - 1u);
    // packs interleaves the 128-bit halves: 64-bit blocks m0lo m1lo m0hi m1hi, put back in order.
    const __m256i moves = _mm256_permute4x64_epi64(
        _mm256_packs_epi32(reinterpret_cast<__m256i>(m0), reinterpret_cast<__m256i>(m1)), 0xD8);
    const __m256i bits = _mm256_inserti128_si256(_mm256_castsi128_si256(p0), p1, 1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_add_epi16(bits, moves));
    return;
  } else if constexpr (kIs16Bit<T>) {
    const RoundedLanes r0 = round_lanes<T>(y0), r1 = round_lanes<T>(y1);
    const BitsLanes b0 = bits_within_budget_vector(r0.bits, r0.value, y0, x0, limit);
    const BitsLanes b1 = bits_within_budget_vector(r1.bits, r1.value, y1, x1, limit);
    const __m256i packed = _mm256_packus_epi32(reinterpret_cast<__m256i>(b0), reinterpret_cast<__m256i>(b1));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_permute4x64_epi64(packed, 0xD8));
    return;
  }
#endif
  store_output_lanes(out, y0, x0, limit);
  store_output_lanes(out + kLanes, y1, x1, limit);
}

// ---- bfloat16 in pairs of vectors, each element widened where it lies ----
// 2 * kLanes bfloat16 elements read as kLanes 32-bit lanes: a lane's upper half (an odd element) is
// that element's float32 value once the lower half is cleared, and the lower half (an even element)
// shifted up is the other's. One load and one operation per vector, where load_widened zero-extends
// 16-bit lanes and shifts them (vpmovzxwd and vpslld in the AVX2 build). The results go back the same
// way: nearest(y) computed in the upper halves (its float32 value, so no shift back before the rule),
// the even vector's shifted down and OR-ed with the odd one's, and stored as they came: no pack and no
// lane-crossing permute. Elements stay in the order even/odd within a lane, so every input of a loop
// that uses these must be read with load_bf16_pair.
struct Bf16Pair {
  FloatLanes even, odd;
};

FASTADV_CPU_TARGET inline Bf16Pair load_bf16_pair(const c10::BFloat16* p) {
  BitsLanes w;
  std::memcpy(&w, p, sizeof(w));
  return {reinterpret_cast<FloatLanes>(w << 16), reinterpret_cast<FloatLanes>(w & 0xFFFF0000u)};
}

// `nan` where y or x is NaN, else `v`: one unordered compare and a blend where the build has them (gcc
// makes the generic form two compares, an OR, and sometimes a NOT).
FASTADV_CPU_TARGET inline BitsLanes unordered_select(FloatLanes y, FloatLanes x, BitsLanes nan, BitsLanes v) {
#if FASTADV_CPU_HALF_LANES >= 16
  const __mmask16 unordered =
      _mm512_cmp_ps_mask(reinterpret_cast<__m512>(y), reinterpret_cast<__m512>(x), _CMP_UNORD_Q);
  return reinterpret_cast<BitsLanes>(
      _mm512_mask_blend_epi32(unordered, reinterpret_cast<__m512i>(v), reinterpret_cast<__m512i>(nan)));
#elif FASTADV_CPU_HALF_LANES >= 8
  const __m256 unordered = _mm256_cmp_ps(reinterpret_cast<__m256>(y), reinterpret_cast<__m256>(x), _CMP_UNORD_Q);
  return reinterpret_cast<BitsLanes>(_mm256_blendv_epi8(reinterpret_cast<__m256i>(v), reinterpret_cast<__m256i>(nan),
                                                        _mm256_castps_si256(unordered)));
#else
  return (y != y) | (x != x) ? nan : v;
#endif
}

// stored<c10::BFloat16>(y, x, limit) on every lane, as its float32 pattern: the bfloat16 bits in the
// upper half, zeros below. Nearest even as round_lanes; every NaN becomes 0x7FC0 as c10 rounds it, and
// so does a lane whose x is NaN (one unordered compare of y and x): the L-inf loop's projection then
// need not carry the NaN x + eps into y (step_math.h's linf_project_lanes<false>). The rule moves by
// one bfloat16 unit, 0x10000 in these lanes (step_math.h's budget_move_vector); it never moves a NaN.
FASTADV_CPU_TARGET inline BitsLanes bf16_within_budget_upper(FloatLanes y, FloatLanes x, FloatLanes limit) {
  const BitsLanes w = reinterpret_cast<BitsLanes>(y);
  const BitsLanes nearest = (w + 0x7FFFu + ((w >> 16) & 1u)) & 0xFFFF0000u;
  const BitsLanes rounded = unordered_select(y, x, BitsLanes{} + 0x7FC00000u, nearest);
  return bits_within_budget_vector(rounded, reinterpret_cast<FloatLanes>(rounded), y, x, limit, 0x10000u);
}

// Two vectors of results in load_bf16_pair's order stored as bfloat16 within the budget.
FASTADV_CPU_TARGET inline void store_bf16_pair(c10::BFloat16* out, FloatLanes y_even, FloatLanes y_odd,
                                               FloatLanes x_even, FloatLanes x_odd, FloatLanes limit) {
  const BitsLanes w =
      (bf16_within_budget_upper(y_even, x_even, limit) >> 16) | bf16_within_budget_upper(y_odd, x_odd, limit);
  std::memcpy(out, &w, sizeof(w));
}
