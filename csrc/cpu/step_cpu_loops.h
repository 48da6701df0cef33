// The CPU loops: an at::parallel_for (OpenMP) over the flat memory order. Work is cut into runs
// of elements that share one (sample, channel), so inside a run the parameters are constants
// and the inner loop is a plain loop the compiler vectorizes.
//
// Compiled once per x86-64 ISA level: each csrc/cpu/step_cpu_<isa>.cpp defines
//   FASTADV_CPU_TARGET      the attribute of the innermost loops (empty for the baseline build),
//   FASTADV_CPU_HALF_LANES  0: float16 converted in portable code; 8: F16C; 16: AVX-512F,
//   FASTADV_CPU_LOOPS       the name of the function that returns this build's entry points,
// then includes this file (csrc/cpu/step_cpu.cpp picks the build at run time). Only the innermost
// loops carry the target attribute, and everything here has internal linkage: no inline function
// that other translation units share (torch's, the standard library's) is compiled for a wider ISA,
// where the linker could pick that copy for the baseline build.
#include <ATen/Parallel.h>
#include <c10/util/ParallelGuard.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <chrono>
#include <functional>
#include <type_traits>
#include <vector>
#include <cmath>
#include <cstdint>
#include <cstring>

#if FASTADV_CPU_HALF_LANES
#include <immintrin.h>
#endif
#include <type_traits>

#include "../dispatch.h"
#include "../step_args.h"
#include "../step_math.h"
#include "step_cpu.h"

namespace fastadv {
namespace {

constexpr int64_t kGrain = 1 << 15;
constexpr int64_t kWidenScratchBytes = 512 * 1024;
// Partial sums of the L2 norms run over kSumChunk elements (see sum_sq_grad). float16 is converted
// kHalfChunk elements at a time: widen, compute, narrow. Small chunks let the out-of-order core
// overlap one chunk's stores with the next chunk's loads; with 1024 elements the phases ran one
// after the other and float16 streamed at the speed of float32, at half the bytes.
constexpr int64_t kSumChunk = 1024;
constexpr int64_t kHalfChunk = 64;

template <typename... T>
constexpr bool kAnyHalf = (std::is_same_v<T, c10::Half> || ...);

// The chunk a loop over these types runs in.
template <typename... T>
constexpr int64_t kChunkOf = FASTADV_CPU_HALF_LANES > 0 && kAnyHalf<T...> ? kHalfChunk : kSumChunk;

// Loads and stores through float, in portable code (the baseline build's float16, and the tails
// of the hardware conversions below). c10::Half's conversions keep the loop from vectorizing
// (float16 ran 10x slower than bfloat16), and so do GCC's _Float16 stores. These are the
// branch-free IEEE conversions of the FP16 library (which c10 also uses), written with selects
// that gcc turns into vector blends. Rounding is to nearest even, bit for bit as torch rounds.
template <typename T>
inline float load_float(T v) {
  return static_cast<float>(v);
}
template <typename T>
inline T store_float(float v) {
  return static_cast<T>(v);
}

inline float float_from_bits(uint32_t w) {
  float f;
  std::memcpy(&f, &w, sizeof(f));
  return f;
}
inline uint32_t bits_from_float(float f) {
  uint32_t w;
  std::memcpy(&w, &f, sizeof(w));
  return w;
}

template <>
inline float load_float(c10::Half v) {
  const uint32_t w = static_cast<uint32_t>(v.x) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  // Normal numbers (and inf/NaN): shift into place and rescale the exponent by 2^-112.
  const float normalized = float_from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  // Subnormals: the mantissa as the low bits of 0.5f's pattern, minus 0.5.
  const float denormalized = float_from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
  return float_from_bits(sign | (two_w < (1u << 27) ? bits_from_float(denormalized) : bits_from_float(normalized)));
}

// bfloat16: the upper half of a float32; rounding to nearest even as c10 does (NaN -> 0x7FC0),
// with a select instead of c10's branch so the loops vectorize.
template <>
inline float load_float(c10::BFloat16 v) {
  return float_from_bits(static_cast<uint32_t>(v.x) << 16);
}

template <>
inline c10::BFloat16 store_float(float f) {
  const uint32_t w = bits_from_float(f);
  const uint32_t rounded = (w + 0x7FFFu + ((w >> 16) & 1u)) >> 16;
  return c10::BFloat16(static_cast<uint16_t>(f != f ? 0x7FC0u : rounded), c10::BFloat16::from_bits());
}

template <>
inline c10::Half store_float(float f) {
  // Scaling by 2^112 then 2^-110 sends too-large values to inf; adding a power of two chosen from
  // the exponent makes the float32 adder round the mantissa to 10 bits, to nearest even.
  float base = (std::fabs(f) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = bits_from_float(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  base = float_from_bits((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = bits_from_float(base);
  const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  const uint32_t half = (sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign);  // NaN -> quiet NaN
  return c10::Half(static_cast<uint16_t>(half), c10::Half::from_bits());
}

// y stored as T without leaving the budget (step_math.h's within_budget; limit: eps for L-inf, 0
// for L2). float32 is stored as it is.
template <typename T>
inline T stored(float y, float x, float limit) {
  const T rounded = store_float<T>(y);
  return within_budget(rounded, load_float(rounded), y, x, limit);
}

// y stored as T by L2's rule, rounded toward x (step_math.h's toward_x).
template <typename T>
inline T stored_l2(float y, float x) {
  const T rounded = store_float<T>(y);
  return toward_x(rounded, load_float(rounded), y, x);
}

#include "step_simd.h"

struct Scalars {
  float eps, alpha, lower, upper;
};

Scalars params_at(const StepParams& p, int64_t b, int64_t c) {
  return {p.eps.at(b, c), p.alpha.at(b, c), p.lower.at(b, c), p.upper.at(b, c)};
}

// ---- float16 through the hardware conversions (F16C, AVX-512F) ----
// In the AVX2 and AVX-512 builds a loop that reads or writes float16 runs over chunks of
// kHalfChunk elements: the chunk's inputs are widened into float32 buffers on the stack (L1) with
// vcvtph2ps, the float32 loop runs on the buffers, and a float16 result is narrowed with
// vcvtps2ph, which rounds to nearest even as torch does (the immediate, not MXCSR, sets the
// rounding). The math is the float32 loop's: one source of truth.
#if FASTADV_CPU_HALF_LANES
FASTADV_CPU_TARGET inline void widen_half(const c10::Half* in, float* out, int64_t n) {
  int64_t i = 0;
#if FASTADV_CPU_HALF_LANES >= 16
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i))));
  }
#endif
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
  }
  for (; i < n; ++i) out[i] = _cvtsh_ss(in[i].x);
}

FASTADV_CPU_TARGET inline void narrow_half(const float* in, c10::Half* out, int64_t n) {
  int64_t i = 0;
#if FASTADV_CPU_HALF_LANES >= 16
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                        _mm512_cvtps_ph(_mm512_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT));
  }
#endif
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) out[i] = c10::Half(_cvtss_sh(in[i], _MM_FROUND_TO_NEAREST_INT), c10::Half::from_bits());
}

#endif

// The loops whose output is 16-bit (or, where the hardware converts float16, that read float16) run
// over chunks of kHalfChunk elements: inputs widened into float32 buffers on the stack (L1), the
// float32 loop on the buffers, then the results rounded within the budget and stored, a whole
// vector at a time (step_simd.h). The math is the float32 loop's: one source of truth. The rule
// per element in the float32 loop kept it from vectorizing (float16 ran 3.6x to 15x slower).
template <typename out_t, typename... In>
constexpr bool kChunked = kIs16Bit<out_t> || (FASTADV_CPU_HALF_LANES > 0 && kAnyHalf<out_t, In...>);

// kLanes elements of an input widened to float32 (float32 is read in place).
template <typename T>
FASTADV_CPU_TARGET inline void widen_lanes(const T* in, float* out) {
  if constexpr (!std::is_same_v<T, float>) store_lanes(out, load_widened(in));
}

template <typename T>
FASTADV_CPU_TARGET inline void widen_element(const T* in, float* out, int64_t j) {
  if constexpr (!std::is_same_v<T, float>) out[j] = load_float(in[j]);
}

// A chunk's inputs (the gradient when kGrad) that are not float32, widened into their buffers in
// one loop: their streams from memory then run side by side, as in the float32 loop. (A loop per
// input, one stream at a time, ran float16 no faster than float32, at half the bytes.)
template <bool kGrad, typename A, typename G, typename X>
FASTADV_CPU_TARGET inline void widen_inputs(const A* a, const G* g, const X* x, float* fa, float* fg, float* fx,
                                            int64_t n) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    widen_lanes(a + j, fa + j);
    if constexpr (kGrad) widen_lanes(g + j, fg + j);
    widen_lanes(x + j, fx + j);
  }
  for (; j < n; ++j) {
    widen_element(a, fa, j);
    if constexpr (kGrad) widen_element(g, fg, j);
    widen_element(x, fx, j);
  }
}

// A chunk of an input as float32: the input itself for float32, else its buffer (widen_inputs).
template <typename T>
FASTADV_CPU_TARGET inline const float* as_float(const T* in, const float* buffer) {
  if constexpr (std::is_same_v<T, float>) {
    return in;
  } else {
    return buffer;
  }
}

// Where a chunk's float32 results go: straight to `out` for float, else to `buffer` and then
// through store_l2_chunk.
template <typename T>
FASTADV_CPU_TARGET inline float* chunk_result(T* out, float* buffer) {
  if constexpr (std::is_same_v<T, float>) {
    return out;
  } else {
    return buffer;
  }
}

template <bool kStep, typename scalar_t, typename grad_t>
FASTADV_CPU_TARGET inline void linf_run(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x, scalar_t* out,
                                        int64_t n, Scalars s, bool targeted) {
  for (int64_t i = 0; i < n; ++i) {
    const float xi = load_float(x[i]);
    const float ai = load_float(x_adv[i]);
    if constexpr (kStep) {
      out[i] = stored<scalar_t>(linf_step_value(ai, load_float(grad[i]), xi, s.eps, s.alpha, s.lower, s.upper, targeted),
                                xi, s.eps);
    } else {
      out[i] = stored<scalar_t>(linf_project_value(ai, xi, s.eps, s.lower, s.upper), xi, s.eps);
    }
  }
}

// The L-inf result y of kLanes elements in float32 (x_adv and grad read from their pointers; grad is
// not read by the projection).
template <bool kStep, typename scalar_t, typename grad_t>
FASTADV_CPU_TARGET inline FloatLanes linf_lanes(const scalar_t* x_adv, const grad_t* grad, FloatLanes x, FloatLanes eps,
                                                FloatLanes step, FloatLanes lower, FloatLanes upper) {
  const FloatLanes av = load_widened(x_adv);
  if constexpr (kStep) {
    return linf_step_lanes(av, load_widened(grad), x, eps, step, lower, upper);
  } else {
    return linf_project_lanes(av, x, eps, lower, upper);
  }
}

// Whether linf_run_lanes reads and writes bfloat16 pairs (step_simd.h's load_bf16_pair): every tensor
// it reads is bfloat16 (the projection reads no gradient).
template <bool kStep, typename scalar_t, typename grad_t>
constexpr bool kBf16Pairs =
    std::is_same_v<scalar_t, c10::BFloat16> && (!kStep || std::is_same_v<grad_t, c10::BFloat16>);

// How far ahead, in elements, the 16-bit L-inf loops prefetch their inputs: 1 KB of each, 16 cache
// lines. The loop streams three inputs from memory and is bound by their latency more than by its
// instructions: on the AMD EPYC (AVX2) host, one thread, 16M elements, the hardware prefetchers alone
// gave 11.2-11.6 ms and this 8.9-9.3 ms (256 to 768 elements ahead measured alike, interleaved in one
// process, outputs equal), 66% -> 84% of copy bandwidth. Non-temporal stores, with or without the
// prefetch, were no faster (with it, 0.4-0.6 ms slower).
constexpr int64_t kPrefetchAhead = 512;

// The cache line of each input of an L-inf loop at element i (the gradient only for a step).
template <bool kStep, typename scalar_t, typename grad_t>
FASTADV_CPU_TARGET inline void prefetch_linf_inputs(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x,
                                                    int64_t i) {
  __builtin_prefetch(x + i);
  __builtin_prefetch(x_adv + i);
  if constexpr (kStep) __builtin_prefetch(grad + i);
}

// The bfloat16 L-inf loop from element i while a whole pair fits before n: step_simd.h's
// load_bf16_pair on every input, step_math.h's clamps without the NaN x select (store_bf16_pair tests
// x for NaN as it rounds), the pair stored rounded within the budget. kPrefetch: the inputs'
// elements kPrefetchAhead on are prefetched each iteration (n must leave that many elements readable
// after it). Returns where it stopped.
template <bool kStep, bool kPrefetch>
FASTADV_CPU_TARGET inline int64_t linf_bf16_pairs(const c10::BFloat16* x_adv, const c10::BFloat16* grad,
                                                  const c10::BFloat16* x, c10::BFloat16* out, int64_t i, int64_t n,
                                                  FloatLanes eps, FloatLanes step, FloatLanes lower, FloatLanes upper) {
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    if constexpr (kPrefetch) prefetch_linf_inputs<kStep>(x_adv, grad, x, i + kPrefetchAhead);
    const Bf16Pair xv = load_bf16_pair(x + i), av = load_bf16_pair(x_adv + i);
    FloatLanes y_even, y_odd;
    if constexpr (kStep) {
      const Bf16Pair g = load_bf16_pair(grad + i);
      y_even = linf_step_lanes<false>(av.even, g.even, xv.even, eps, step, lower, upper);
      y_odd = linf_step_lanes<false>(av.odd, g.odd, xv.odd, eps, step, lower, upper);
    } else {
      y_even = linf_project_lanes<false>(av.even, xv.even, eps, lower, upper);
      y_odd = linf_project_lanes<false>(av.odd, xv.odd, eps, lower, upper);
    }
    store_bf16_pair(out + i, y_even, y_odd, xv.even, xv.odd, eps);
  }
  return i;
}

// The 16-bit L-inf loop from element i while two vectors fit before n: their chains run side by
// side, and they are stored together (store_output_pair). kPrefetch as linf_bf16_pairs.
template <bool kStep, bool kPrefetch, typename scalar_t, typename grad_t>
FASTADV_CPU_TARGET inline int64_t linf_vector_pairs(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x,
                                                    scalar_t* out, int64_t i, int64_t n, FloatLanes eps,
                                                    FloatLanes step, FloatLanes lower, FloatLanes upper) {
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    if constexpr (kPrefetch) prefetch_linf_inputs<kStep>(x_adv, grad, x, i + kPrefetchAhead);
    const int64_t j = i + kLanes;
    const FloatLanes x0 = load_widened(x + i), x1 = load_widened(x + j);
    const FloatLanes y0 = linf_lanes<kStep>(x_adv + i, kStep ? grad + i : grad, x0, eps, step, lower, upper);
    const FloatLanes y1 = linf_lanes<kStep>(x_adv + j, kStep ? grad + j : grad, x1, eps, step, lower, upper);
    store_output_pair(out + i, y0, y1, x0, x1, eps);
  }
  return i;
}

// The L-inf loop of the 16-bit dtypes (kChunked; float32 too on 512-bit vectors, kLinfLanes below):
// one pass over whole vectors, from the loads (widened to float32 once) through step_math.h's
// linf_step_lanes to the store rounded within the budget, all in registers; the tail through the
// scalar loop. It replaced chunks of kHalfChunk elements that were widened into float32 buffers, run
// through the float32 loop and rounded in a third loop: three passes through L1 per chunk cost
// float16 and bfloat16 about twice the instructions per element, and the step ran at a third of the
// copy's bandwidth.
template <bool kStep, typename scalar_t, typename grad_t>
FASTADV_CPU_TARGET inline void linf_run_lanes(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x,
                                              scalar_t* out, int64_t n, Scalars s, bool targeted) {
  const FloatLanes eps = splat_lanes(s.eps), lower = splat_lanes(s.lower), upper = splat_lanes(s.upper);
  const FloatLanes step = splat_lanes(targeted ? -s.alpha : s.alpha);
  int64_t i = 0;
  if constexpr (kBf16Pairs<kStep, scalar_t, grad_t>) {
    // bfloat16 throughout (linf_bf16_pairs): with the inputs prefetched while kPrefetchAhead elements
    // remain beyond the iteration, then without.
    i = linf_bf16_pairs<kStep, true>(x_adv, grad, x, out, i, n - kPrefetchAhead, eps, step, lower, upper);
    i = linf_bf16_pairs<kStep, false>(x_adv, grad, x, out, i, n, eps, step, lower, upper);
  }
  // float32 (kLinfLanes) streams twice the bytes per element, and the hardware prefetchers keep up:
  // the prefetches made its step at 16M 0.73x as fast (its projection 0.79x).
  if constexpr (!std::is_same_v<scalar_t, float>) {
    i = linf_vector_pairs<kStep, true>(x_adv, grad, x, out, i, n - kPrefetchAhead, eps, step, lower, upper);
  }
  i = linf_vector_pairs<kStep, false>(x_adv, grad, x, out, i, n, eps, step, lower, upper);
  for (; i + kLanes <= n; i += kLanes) {
    const FloatLanes xv = load_widened(x + i);
    const FloatLanes y = linf_lanes<kStep>(x_adv + i, kStep ? grad + i : grad, xv, eps, step, lower, upper);
    store_output_lanes(out + i, y, xv, eps);
  }
  linf_run<kStep>(x_adv + i, kStep ? grad + i : grad, x + i, out + i, n - i, s, targeted);
}

// A float16 gradient also takes the whole-vector loop in the baseline build (where kChunked leaves
// float32 outputs with 16-bit inputs to the scalar loop): there gcc did not vectorize the scalar
// loop's load_float<c10::Half>, and a float32 step with a float16 gradient ran at 10.2-10.7 ns per
// element, 18x the float32 step's time (AMD EPYC, FASTADV_CPU_ISA=baseline, 196K elements in cache;
// benchmarks/cpu_builds_scan.py).
// The AVX-512 build runs float32 through it too. gcc vectorizes the scalar loop's clamps with their
// NaN tests of the bounds (two compares, a mask OR and a masked move per clamp of the ball), where
// the whole-vector loop needs one vmaxps or vminps per clamp and one select for a NaN x. On the AMD
// EPYC Zen 4 host the scalar loop's float32 step ran 1.2-1.3x slower than the AVX2 build's in cache;
// the whole-vector loop is 1.39-1.40x faster than it in cache and on CIFAR-size batches (the
// projection 1.08-1.12x), the same bits, and the same speed from memory (16M). The AVX2 build keeps
// gcc's loop: the whole-vector loop was 0.97x (step) and 0.93x (projection) as fast there.
template <bool kStep, typename scalar_t, typename grad_t>
constexpr bool kLinfLanes = kChunked<scalar_t, grad_t> || (kStep && std::is_same_v<grad_t, c10::Half>) || kLanes >= 16;

template <bool kStep, typename scalar_t, typename grad_t>
FASTADV_CPU_TARGET void run_uniform(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x, scalar_t* out,
                                    int64_t begin, int64_t end, Scalars s, bool targeted) {
  if constexpr (kLinfLanes<kStep, scalar_t, grad_t>) {
    linf_run_lanes<kStep>(x_adv + begin, kStep ? grad + begin : grad, x + begin, out + begin, end - begin, s,
                          targeted);
    return;
  }
  linf_run<kStep>(x_adv + begin, kStep ? grad + begin : grad, x + begin, out + begin, end - begin, s, targeted);
}

// Length of the runs over which every parameter is constant (always divides the tensor).
int64_t uniform_run_length(const Geometry& g, int64_t numel) {
  if (g.needs_channel) return g.channel_div;  // contiguous: a spatial plane; channels_last: 1
  if (g.needs_sample) return g.sample_size;
  return numel;
}

// Splits [begin, end) into runs over which the (sample, channel) the parameters are read at is
// constant, and calls f(run_begin, run_end, b, c) for each run.
template <typename F>
void for_each_run(int64_t begin, int64_t end, const Geometry& g, int64_t numel, F&& f) {
  const int64_t run = uniform_run_length(g, numel);
  if (run > 1) {
    for (int64_t i = begin; i < end;) {
      const int64_t run_end = std::min(end, (i / run + 1) * run);
      const int64_t b = g.needs_sample ? i / g.sample_size : 0;
      const int64_t c = g.needs_channel ? (i / g.channel_div) % g.channels : 0;
      f(i, run_end, b, c);
      i = run_end;
    }
    return;
  }
  // The channel is the fastest-moving index (channels_last, or no spatial dims): walk it
  // element by element, counting instead of dividing.
  int64_t b = begin / g.sample_size, c = begin % g.channels, left = g.sample_size - begin % g.sample_size;
  for (int64_t i = begin; i < end; ++i) {
    f(i, i + 1, b, c);
    if (++c == g.channels) c = 0;
    if (--left == 0) {
      ++b;
      left = g.sample_size;
    }
  }
}

template <bool kStep, typename scalar_t, typename grad_t>
void linf_cpu(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x, scalar_t* out, const StepLaunch& launch,
              bool targeted) {
  const StepParams& p = launch.params;
  at::parallel_for(0, launch.numel, kGrain, [&](int64_t begin, int64_t end) {
    for_each_run(begin, end, launch.geometry, launch.numel, [&](int64_t i0, int64_t i1, int64_t b, int64_t c) {
      run_uniform<kStep>(x_adv, grad, x, out, i0, i1, params_at(p, b, c), targeted);
    });
  });
}

// ---- L2: per sample, pass 1 sums grad^2, pass 2 sums delta^2, pass 3 writes, while the sample (or
// this thread's part of it, L2Team below) sits in the core's cache. ----

// ---- The sums of squares, on whole vectors ----
// kLanes elements of an input as float32 (16-bit types through load_widened, step_simd.h).
template <typename T>
FASTADV_CPU_TARGET inline FloatLanes load_float_lanes(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return load_lanes(p);
  } else {
    return load_widened(p);
  }
}

// The sum of the squares of n terms: kSumAccumulators vector accumulators (with one, every add
// waits for the previous one), added lane by lane at the end, then the tail one element at a time.
// Terms gives the terms kLanes at a time (lanes) and one at a time (one), from step_math.h's
// expressions. (The scalar loops under `omp simd` did not vectorize: gcc kept the NaN test of
// l2_grad_entry as a branch, and the gradient's sum ran at one element per add latency, 60% of
// the float32 step's time on an ImageNet batch.)
constexpr int kSumAccumulators = 4;

template <typename Terms>
FASTADV_CPU_TARGET inline float sum_squares(const Terms& terms, int64_t n) {
  FloatLanes acc[kSumAccumulators] = {};
  int64_t i = 0;
  for (; i + kSumAccumulators * kLanes <= n; i += kSumAccumulators * kLanes) {
    for (int k = 0; k < kSumAccumulators; ++k) {
      const FloatLanes v = terms.lanes(i + k * kLanes);
      acc[k] += v * v;
    }
  }
  for (; i + kLanes <= n; i += kLanes) {
    const FloatLanes v = terms.lanes(i);
    acc[0] += v * v;
  }
  const FloatLanes lanes = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  float total = 0.f;
  for (int k = 0; k < kLanes; ++k) total += lanes[k];
  for (; i < n; ++i) {
    const float v = terms.one(i);
    total += v * v;
  }
  return total;
}

// kFiltered false: the entries as they are, without l2_grad_entry's NaN test (see
// sum_sq_grad<false>).
template <typename grad_t, bool kFiltered = true>
struct GradTerms {
  const grad_t* grad;
  FASTADV_CPU_TARGET FloatLanes lanes(int64_t i) const {
    if constexpr (kFiltered) {
      return l2_grad_entry_lanes(load_float_lanes(grad + i));
    } else {
      return load_float_lanes(grad + i);
    }
  }
  FASTADV_CPU_TARGET float one(int64_t i) const {
    return kFiltered ? l2_grad_entry(load_float(grad[i])) : load_float(grad[i]);
  }
};

// The sums run over chunks of kSumChunk elements, each with its own accumulators, added at the
// end: one running sum per vector lane over a whole sample (33K elements) lost the norm's sixth
// digit with 8 lanes, more than the contract's float32 tolerance allows.
// sum_in_chunks is that chunk loop: terms_at(i) gives the terms of the chunk from element i (a
// Terms for sum_squares), the chunks' sums are added in order.
template <typename TermsAt>
FASTADV_CPU_TARGET inline float sum_in_chunks(TermsAt terms_at, int64_t begin, int64_t end) {
  float acc = 0.f;
  for (int64_t i = begin; i < end; i += kSumChunk) acc += sum_squares(terms_at(i), std::min(kSumChunk, end - i));
  return acc;
}

// The gradient's sum of squares. kFiltered false, on a 16-bit step's first pass: with no NaN entry
// the terms, and so the sum, are the filtered ones (l2_grad_entry(g) is g); a NaN entry makes the
// sum NaN (every other term is a square, >= 0 or +inf, so no NaN arises from them), and l2_sample
// then runs the filtered sum again. Gradients without NaN, all but a broken step's, skip the test's
// two vector instructions per vector here and in the delta pass that reads the gradient again
// (DeltaTerms16 with kGradClean).
template <bool kFiltered = true, typename grad_t>
FASTADV_CPU_TARGET float sum_sq_grad(const grad_t* grad, int64_t begin, int64_t end) {
  return sum_in_chunks([grad](int64_t i) { return GradTerms<grad_t, kFiltered>{grad + i}; }, begin, end);
}

// The sum of f(grad entry) in plain order: the second reduction of a sample whose sum of squares
// left float32's range (l2_direction), off the fast path.
template <typename grad_t, typename F>
float sum_grad_of(const grad_t* grad, int64_t begin, int64_t end, F f) {
  float acc = 0.f;
  for (int64_t i = begin; i < end; ++i) acc += f(load_float(grad[i]));
  return acc;
}

template <bool kStep, typename scalar_t, typename grad_t, typename Dir>
inline float l2_delta_at(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x, int64_t i,
                         Dir dir, float alpha, bool targeted) {
  if constexpr (kStep) {
    return l2_step_delta(load_float(x_adv[i]), load_float(grad[i]), load_float(x[i]), dir, alpha,
                         targeted);
  } else {
    return load_float(x_adv[i]) - load_float(x[i]);
  }
}

template <bool kStep, typename scalar_t, typename grad_t, typename Dir>
FASTADV_CPU_TARGET inline float sum_sq_delta_run(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x,
                                                 int64_t n, Dir dir, float alpha, bool targeted) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    const float d = l2_delta_at<kStep>(x_adv, grad, x, i, dir, alpha, targeted);
    acc += d * d;
  }
  return acc;
}

// The perturbation's terms for a sample with a finite sum of squares (Dir float: the inverse norm).
template <bool kStep, typename scalar_t, typename grad_t>
struct DeltaTerms {
  const scalar_t* x_adv;
  const grad_t* grad;
  const scalar_t* x;
  float inverse_norm, alpha;
  bool targeted;
  FASTADV_CPU_TARGET FloatLanes lanes(int64_t i) const {
    const FloatLanes xa = load_float_lanes(x_adv + i), xi = load_float_lanes(x + i);
    if constexpr (kStep) {
      const FloatLanes d = l2_grad_entry_lanes(load_float_lanes(grad + i)) * inverse_norm;
      return l2_step_delta_lanes(xa, d, xi, targeted ? -alpha : alpha);
    } else {
      return xa - xi;
    }
  }
  FASTADV_CPU_TARGET float one(int64_t i) const {
    return l2_delta_at<kStep>(x_adv, grad, x, i, inverse_norm, alpha, targeted);
  }
};

// float32 steps keep the perturbation: the delta pass stores each term into `out` (StoredDeltaTerms),
// and the write pass finishes it in place, reading out and x (write_l2_from_delta) instead of
// recomputing the direction and the step from x_adv, grad and x. The stored terms are the delta
// pass's own, the values the write pass recomputed (the output keeps its bits); the write reads
// two inputs instead of three and does a third of the arithmetic, and the output's cache lines are
// fetched in the delta pass, whose loads from memory they overlap (one thread, AVX2 EPYC, with the
// pipelined write below: benchmarks/results/step_copy_ratio_cpu_amd_epyc_avx2_l2_f32.md).
// `out` may be x_adv itself (an in-place step): every pass after the delta pass reads delta from
// out, never x_adv, and each thread of a team reads back only the blocks it wrote.
template <bool kStep, typename scalar_t, typename grad_t>
struct StoredDeltaTerms {
  DeltaTerms<kStep, scalar_t, grad_t> terms;
  float* delta;
  FASTADV_CPU_TARGET FloatLanes lanes(int64_t i) const {
    const FloatLanes v = terms.lanes(i);
    store_lanes(delta + i, v);
    return v;
  }
  FASTADV_CPU_TARGET float one(int64_t i) const {
    const float v = terms.one(i);
    delta[i] = v;
    return v;
  }
};

// sum_sq_delta's fast path (a finite sum of squares: Dir is the inverse norm), storing the terms.
template <bool kStep, typename scalar_t, typename grad_t>
FASTADV_CPU_TARGET float sum_sq_delta_stored(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x,
                                             float* delta, int64_t begin, int64_t end, float inverse_norm,
                                             float alpha, bool targeted) {
  return sum_in_chunks(
      [&](int64_t i) {
        return StoredDeltaTerms<kStep, scalar_t, grad_t>{
            {x_adv + i, kStep ? grad + i : grad, x + i, inverse_norm, alpha, targeted}, delta + i};
      },
      begin, end);
}

// sum_scaled_sq_delta on stored terms (the same values, in the same plain order).
inline float sum_scaled_sq_stored(const float* delta, int64_t begin, int64_t end, float scale) {
  float acc = 0.f;
  for (int64_t i = begin; i < end; ++i) {
    const float d = delta[i] * scale;
    acc += d * d;
  }
  return acc;
}

// write_l2_run on stored terms: out holds delta on entry.
FASTADV_CPU_TARGET inline void write_l2_from_delta(const float* x, float* out, int64_t begin, int64_t end,
                                                   float factor, float lower, float upper) {
  for (int64_t i = begin; i < end; ++i) out[i] = l2_output(x[i], out[i], factor, lower, upper);
}

// A float32 sample's write, left for the next pass (l2_float_samples): out holds delta (StoredDeltaTerms).
struct L2PendingWrite {
  const float* x;
  float* out;
  float factor, lower, upper;
  bool valid;
};

template <bool kStep, typename scalar_t, typename grad_t, typename Dir>
FASTADV_CPU_TARGET float sum_sq_delta(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x, int64_t begin,
                                      int64_t end, Dir dir, float alpha, bool targeted) {
  if constexpr (std::is_same_v<Dir, float>) {
    return sum_in_chunks(
        [&](int64_t i) {
          return DeltaTerms<kStep, scalar_t, grad_t>{x_adv + i, kStep ? grad + i : grad, x + i, dir, alpha, targeted};
        },
        begin, end);
  }
  float acc = 0.f;
  for (int64_t i = begin; i < end; i += kChunkOf<scalar_t, grad_t>) {
    const int64_t n = std::min(kChunkOf<scalar_t, grad_t>, end - i);
#if FASTADV_CPU_HALF_LANES
    if constexpr (kAnyHalf<scalar_t, grad_t>) {
      alignas(64) float buffers[3][kHalfChunk];
      const grad_t* grad_i = kStep ? grad + i : grad;
      widen_inputs<kStep>(x_adv + i, grad_i, x + i, buffers[0], buffers[1], buffers[2], n);
      const float* g = nullptr;
      if constexpr (kStep) g = as_float(grad_i, buffers[1]);
      acc += sum_sq_delta_run<kStep>(as_float(x_adv + i, buffers[0]), g, as_float(x + i, buffers[2]), n,
                                     dir, alpha, targeted);
      continue;
    }
#endif
    acc += sum_sq_delta_run<kStep>(x_adv + i, kStep ? grad + i : grad, x + i, n, dir, alpha, targeted);
  }
  return acc;
}

// The sum of (delta * scale)^2 in plain order: the second reduction of a perturbation whose sum of
// squares left float32's range (l2_delta_scale), off the fast path.
template <bool kStep, typename scalar_t, typename grad_t, typename Dir>
float sum_scaled_sq_delta(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x, int64_t begin, int64_t end,
                          Dir dir, float alpha, bool targeted, float scale) {
  float acc = 0.f;
  for (int64_t i = begin; i < end; ++i) {
    const float d = l2_delta_at<kStep>(x_adv, grad, x, i, dir, alpha, targeted) * scale;
    acc += d * d;
  }
  return acc;
}

template <bool kStep, typename scalar_t, typename grad_t, typename out_t, typename Dir>
FASTADV_CPU_TARGET inline void write_l2_run(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x, out_t* out,
                                            int64_t n, Dir dir, float alpha, bool targeted,
                                            float factor, float lower, float upper) {
  for (int64_t i = 0; i < n; ++i) {
    const float d = l2_delta_at<kStep>(x_adv, grad, x, i, dir, alpha, targeted);
    const float xi = load_float(x[i]);
    out[i] = stored_l2<out_t>(l2_output(xi, d, factor, lower, upper), xi);
  }
}

// The bfloat16 patterns (low halves of the lanes) of y rounded toward x, as store_l2_output_lanes
// below describes.
FASTADV_CPU_TARGET inline BitsLanes bf16_toward_x_bits(FloatLanes y, FloatLanes x) {
  using Mask = decltype(y < y);
  const BitsLanes w = reinterpret_cast<BitsLanes>(y);
  const Mask away = (y < x) ^ (reinterpret_cast<Mask>(w) < Mask{});
  const Mask inexact = reinterpret_cast<Mask>(w & 0xFFFFu) != Mask{};
  const BitsLanes bits = (w >> 16) - reinterpret_cast<BitsLanes>(inexact & away);
  return unordered_select(y, x, BitsLanes{} + 0x7FC0u, bits);
}

// kLanes float32 results y of an L2 write stored as T, rounded toward x (step_math.h's
// bits_toward_x_lanes, lane for lane):
// - float16 with F16C / AVX-512F: y converted twice by vcvtps2ph with directed rounding, toward -inf
//   and toward +inf, and the one toward x kept (toward +inf where y < x). y rounded toward x is the
//   rule's result (a NaN converts alike in both modes, to nearest's pattern; y == x is exact), in
//   four instructions where nearest rounding and the rule's move took twelve.
// - bfloat16: y's pattern truncated to its upper half (toward zero), plus one unit where y was not
//   exact and x lies beyond y as seen from zero (y < x for a positive y, y > x for a negative one:
//   rounding toward x moves away from zero there); every NaN becomes 0x7FC0, as c10 rounds it.
// - float16 without F16C: nearest (round_lanes) and the rule's move (l2_budget_move_vector).
template <typename T>
FASTADV_CPU_TARGET inline void store_l2_output_lanes(T* out, FloatLanes y, FloatLanes x) {
  if constexpr (std::is_same_v<T, float>) {  // float32 outputs are stored as they are
    store_lanes(out, y);
    return;
  }
#if FASTADV_CPU_HALF_LANES >= 16
  if constexpr (std::is_same_v<T, c10::Half>) {
    const __m512 yv = reinterpret_cast<__m512>(y);
    const __mmask16 up = _mm512_cmp_ps_mask(yv, reinterpret_cast<__m512>(x), _CMP_LT_OQ);
    const __m256i down_bits = _mm512_cvtps_ph(yv, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m256i up_bits = _mm512_cvtps_ph(yv, _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_mask_blend_epi16(up, down_bits, up_bits));
    return;
  }
#elif FASTADV_CPU_HALF_LANES >= 8
  if constexpr (std::is_same_v<T, c10::Half>) {
    const __m256 yv = reinterpret_cast<__m256>(y);
    const __m256i up = _mm256_castps_si256(_mm256_cmp_ps(yv, reinterpret_cast<__m256>(x), _CMP_LT_OQ));
    const __m128i up16 = _mm_packs_epi32(_mm256_castsi256_si128(up), _mm256_extracti128_si256(up, 1));
    const __m128i down_bits = _mm256_cvtps_ph(yv, _MM_FROUND_TO_NEG_INF);
    const __m128i up_bits = _mm256_cvtps_ph(yv, _MM_FROUND_TO_POS_INF);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm_blendv_epi8(down_bits, up_bits, up16));
    return;
  }
#endif
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    store_bits(out, bf16_toward_x_bits(y, x));
  } else {
    const RoundedLanes r = round_lanes<T>(y);
    store_bits(out, r.bits - reinterpret_cast<BitsLanes>(l2_budget_move_vector(r.value, y, x)));
  }
}

// n float32 results y of an L2 write stored as T (store_l2_output_lanes), then the scalar form on the
// tail; x: the inputs' x in float32. float32 results are already in place (chunk_result).
template <typename T>
FASTADV_CPU_TARGET inline void store_l2_chunk(const float* y, T* out, int64_t n, const float* x) {
  if constexpr (!std::is_same_v<T, float>) {
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) store_l2_output_lanes(out + i, load_lanes(y + i), load_lanes(x + i));
    for (; i < n; ++i) out[i] = stored_l2<T>(y[i], x[i]);
  }
}

// The L2 write of the 16-bit dtypes (kChunked) for a sample with a finite sum of squares (inverse
// norm: the fast path), per chunk of kHalfChunk elements in two loops: the float32 results from the
// 16-bit inputs widened in registers (step_math.h's l2_step_delta_lanes, l2_output_lanes) into one
// float32 buffer, then those results rounded toward x (store_l2_output_lanes) and stored, x widened
// again. It replaced three loops per chunk (inputs widened into three float32 buffers, the float32
// loop, the rounding loop): 7-10% faster on the CIFAR and ImageNet batches. One loop from the
// loads to the store was 5-10% slower than the three: its chain per vector (about 17 dependent
// instructions, up to the pack and the store) left too few vectors in flight.
template <bool kStep, typename scalar_t, typename grad_t, typename out_t>
FASTADV_CPU_TARGET inline void write_l2_run_lanes(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x,
                                                  out_t* out, int64_t n, float inverse_norm, float alpha,
                                                  bool targeted, float factor, float lower, float upper) {
  const FloatLanes lower_v = splat_lanes(lower), upper_v = splat_lanes(upper), factor_v = splat_lanes(factor);
  const FloatLanes inverse_norm_v = splat_lanes(inverse_norm);
  const float step = targeted ? -alpha : alpha;
  auto value = [&](int64_t j, FloatLanes xv) {
    const FloatLanes av = load_float_lanes(x_adv + j);
    FloatLanes d;
    if constexpr (kStep) {
      d = l2_step_delta_lanes(av, l2_grad_entry_lanes(load_float_lanes(grad + j)) * inverse_norm_v, xv, step);
    } else {
      d = av - xv;
    }
    return l2_output_lanes(xv, d, factor_v, lower_v, upper_v);
  };
  int64_t i = 0;
  alignas(64) float ys[kHalfChunk];
  for (; i + kHalfChunk <= n; i += kHalfChunk) {
    for (int64_t j = 0; j < kHalfChunk; j += kLanes) store_lanes(ys + j, value(i + j, load_float_lanes(x + i + j)));
    for (int64_t j = 0; j < kHalfChunk; j += kLanes) {
      store_l2_output_lanes(out + i + j, load_lanes(ys + j), load_float_lanes(x + i + j));
    }
  }
  for (; i + kLanes <= n; i += kLanes) {
    const FloatLanes xv = load_float_lanes(x + i);
    store_l2_output_lanes(out + i, value(i, xv), xv);
  }
  write_l2_run<kStep>(x_adv + i, kStep ? grad + i : grad, x + i, out + i, n - i, inverse_norm, alpha, targeted,
                      factor, lower, upper);
}

// Two vectors of results (2 * kLanes elements from out), each as store_l2_output_lanes stores it. The
// AVX2 build's float16 narrows the pair's masks at once (one pack and one permute for 16 elements
// instead of an extract and a pack per 8) and stores 16 elements.
template <typename T>
FASTADV_CPU_TARGET inline void store_l2_output_pair(T* out, FloatLanes y0, FloatLanes y1, FloatLanes x0,
                                                    FloatLanes x1) {
#if FASTADV_CPU_HALF_LANES == 8
  if constexpr (std::is_same_v<T, c10::Half>) {
    const __m256 a0 = reinterpret_cast<__m256>(y0), a1 = reinterpret_cast<__m256>(y1);
    const __m256i up0 = _mm256_castps_si256(_mm256_cmp_ps(a0, reinterpret_cast<__m256>(x0), _CMP_LT_OQ));
    const __m256i up1 = _mm256_castps_si256(_mm256_cmp_ps(a1, reinterpret_cast<__m256>(x1), _CMP_LT_OQ));
    // packs interleaves the 128-bit halves: 64-bit blocks up0lo up1lo up0hi up1hi, put back in order.
    const __m256i up = _mm256_permute4x64_epi64(_mm256_packs_epi32(up0, up1), 0xD8);
    const __m128i down0 = _mm256_cvtps_ph(a0, _MM_FROUND_TO_NEG_INF);
    const __m128i down1 = _mm256_cvtps_ph(a1, _MM_FROUND_TO_NEG_INF);
    const __m128i up_0 = _mm256_cvtps_ph(a0, _MM_FROUND_TO_POS_INF);
    const __m128i up_1 = _mm256_cvtps_ph(a1, _MM_FROUND_TO_POS_INF);
    const __m256i down_bits = _mm256_inserti128_si256(_mm256_castsi128_si256(down0), down1, 1);
    const __m256i up_bits = _mm256_inserti128_si256(_mm256_castsi128_si256(up_0), up_1, 1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_blendv_epi8(down_bits, up_bits, up));
    return;
  }
#endif
  store_l2_output_lanes(out, y0, x0);
  store_l2_output_lanes(out + kLanes, y1, x1);
}

// The 16-bit L2 write from the perturbation the delta pass stored (l2_delta_and_write_16bit): out =
// the L2 output of x + delta * factor, rounded toward x. n elements from the positions of x, delta
// and out; the tail as write_l2_run computes it.
template <typename scalar_t, typename out_t>
FASTADV_CPU_TARGET inline void write_l2_from_delta_16bit(const scalar_t* x, const float* delta, out_t* out, int64_t n,
                                                         float factor, float lower, float upper) {
  const FloatLanes lower_v = splat_lanes(lower), upper_v = splat_lanes(upper), factor_v = splat_lanes(factor);
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const int64_t j = i + kLanes;
    const FloatLanes x0 = load_float_lanes(x + i), x1 = load_float_lanes(x + j);
    const FloatLanes y0 = l2_output_lanes(x0, load_lanes(delta + i), factor_v, lower_v, upper_v);
    const FloatLanes y1 = l2_output_lanes(x1, load_lanes(delta + j), factor_v, lower_v, upper_v);
    store_l2_output_pair(out + i, y0, y1, x0, x1);
  }
  for (; i + kLanes <= n; i += kLanes) {
    const FloatLanes xv = load_float_lanes(x + i);
    store_l2_output_lanes(out + i, l2_output_lanes(xv, load_lanes(delta + i), factor_v, lower_v, upper_v), xv);
  }
  for (; i < n; ++i) {
    const float xi = load_float(x[i]);
    out[i] = stored_l2<out_t>(l2_output(xi, delta[i], factor, lower, upper), xi);
  }
}

template <bool kStep, typename scalar_t, typename grad_t, typename out_t, typename Dir>
FASTADV_CPU_TARGET void write_l2(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x, out_t* out,
                                 int64_t begin, int64_t end, Dir dir, float alpha, bool targeted,
                                 float factor, float lower, float upper) {
  if constexpr (kChunked<out_t, scalar_t, grad_t> && std::is_same_v<Dir, float>) {
    write_l2_run_lanes<kStep>(x_adv + begin, kStep ? grad + begin : grad, x + begin, out + begin, end - begin, dir,
                              alpha, targeted, factor, lower, upper);
    return;
  } else if constexpr (kChunked<out_t, scalar_t, grad_t>) {
    alignas(64) float buffers[4][kHalfChunk];
    for (int64_t i = begin; i < end; i += kHalfChunk) {
      const int64_t n = std::min(kHalfChunk, end - i);
      const grad_t* grad_i = kStep ? grad + i : grad;
      widen_inputs<kStep>(x_adv + i, grad_i, x + i, buffers[0], buffers[1], buffers[2], n);
      const float* g = nullptr;
      if constexpr (kStep) g = as_float(grad_i, buffers[1]);
      float* o = chunk_result(out + i, buffers[3]);
      const float* xf = as_float(x + i, buffers[2]);
      write_l2_run<kStep>(as_float(x_adv + i, buffers[0]), g, xf, o, n, dir, alpha, targeted, factor,
                          lower, upper);
      store_l2_chunk(o, out + i, n, xf);
    }
    return;
  }
  write_l2_run<kStep>(x_adv + begin, kStep ? grad + begin : grad, x + begin, out + begin, end - begin,
                      dir, alpha, targeted, factor, lower, upper);
}

template <typename T>
FASTADV_CPU_TARGET void widen(const T* in, float* out, int64_t begin, int64_t end) {
#if FASTADV_CPU_HALF_LANES
  if constexpr (kAnyHalf<T>) {
    widen_half(in + begin, out + begin, end - begin);
    return;
  }
#endif
  for (int64_t i = begin; i < end; ++i) out[i] = load_float(in[i]);
}

// A sample's norms are sums of per-block partial sums, kL2Block elements a block, added in block
// order: the result does not depend on how many threads share the sample or in which order they
// walk its blocks.
constexpr int64_t kL2Block = 2048;

// How a sample's passes are shared. One thread per sample (a team of one: samples are spread over
// the threads, each sample's passes run on one core while it sits in that core's cache), or, for a
// batch smaller than the thread count, every thread of the region takes a contiguous part of each
// sample, with a barrier after each sum. (Nested at::parallel_for calls, which this replaces, run
// inline: a batch of one ran on one thread.) `sums` holds a partial sum per block of the sample,
// shared by the team; two of them, alternating from one sum to the next, so a thread that is ahead
// never overwrites a partial sum that another thread is still adding.
struct L2Team {
  int64_t first_block, last_block, blocks;  // this thread's blocks of the sample, and the count
  bool shared;                              // several threads share the sample: barriers
  float* sums[2];
  int64_t sum_count;
};

inline void team_barrier(const L2Team& team) {
  if (team.shared) {
#pragma omp barrier
  }
}

// Calls f(block, begin, end) on this thread's blocks of an n-element sample, in order.
template <typename F>
void for_team_blocks(const L2Team& team, int64_t n, F&& f) {
  for (int64_t k = team.first_block; k < team.last_block; ++k) f(k, k * kL2Block, std::min(n, (k + 1) * kL2Block));
}

// The sample's sum of partial(begin, end) over its blocks (see kL2Block).
template <typename F>
float team_sum(L2Team& team, int64_t n, F&& partial) {
  float* sums = team.sums[team.sum_count++ & 1];
  for_team_blocks(team, n, [&](int64_t k, int64_t begin, int64_t end) { sums[k] = partial(begin, end); });
  team_barrier(team);
  float acc = 0.f;
  for (int64_t k = 0; k < team.blocks; ++k) acc += sums[k];
  return acc;
}

// ---- The 16-bit L2 step through float32 scratch ----
// A 16-bit sample's passes hand each other float32 values in this thread's scratch (reused across
// calls, at the sample's positions; a team's thread uses its own blocks of it): the delta pass
// stores the perturbation, which the write reads with x instead of recomputing it from x_adv, the
// gradient and x. A sample whose two scratch arrays fit in kL2Scratch16SmallBytes (CIFAR's 3072
// elements take 24 KB) also keeps x widened from the delta pass for the write; larger samples keep
// the perturbation only (ImageNet's 150528 elements: 600 KB). The stored values are those the
// passes computed before, so the output keeps its bits. Samples beyond kL2DeltaScratchMax elements
// (16 MB of scratch) recompute the perturbation in the write (write_l2).
// The threshold, on the Zen 4 EPYC (float16 and bfloat16 against torch.compile, alternating
// processes): 3x80x80 samples (150 KB) 1.44-1.61x keeping x, 1.21-1.41x keeping x and the
// gradient as before; 3x96x96 (216 KB) 1.37-1.41x keeping x, 1.48-1.64x keeping the perturbation
// only.
// The gradient is read twice from the tensor (its sum of squares, then the delta pass), not kept:
// keeping its entries in a third scratch array for the delta pass made the float16 and bfloat16
// steps slower on the Zen 4 EPYC (in one process, random order, outputs equal): 1.07-1.15x on the
// CIFAR batch in both builds and layouts, 1.18-1.30x on 3x64x64 and 3x80x80 samples (AVX-512).
// The array's store and reload cost more than a second widening, and with it a CIFAR sample's
// passes touched 54 KB against a 32 KB L1.
constexpr int64_t kL2DeltaScratchMax = int64_t{1} << 22;
constexpr int64_t kL2Scratch16SmallBytes = 160 * 1024;

struct L2Scratch16 {
  float* delta;  // the perturbation (nullptr: recomputed in the write)
  float* x;      // x as float32 (nullptr: widened again in the write)
};

inline L2Scratch16 l2_scratch_16bit(int64_t n, bool keep_x) {
  if (n > kL2DeltaScratchMax) return {nullptr, nullptr};
  keep_x = keep_x && 2 * n * static_cast<int64_t>(sizeof(float)) <= kL2Scratch16SmallBytes;
  static thread_local std::vector<float> scratch;
  const int64_t size = n * (1 + keep_x);
  if (static_cast<int64_t>(scratch.size()) < size) scratch.resize(static_cast<size_t>(size));
  float* base = scratch.data();
  return {base, keep_x ? base + n : nullptr};
}

// DeltaTerms storing each term in delta (as StoredDeltaTerms) and x widened (kStoreX); the same
// values (the tail as DeltaTerms computes it). kGradClean: the gradient has no NaN entry
// (sum_sq_grad<false>), so its entries are read without l2_grad_entry's test.
template <bool kStep, bool kStoreX, bool kGradClean, typename scalar_t, typename grad_t>
struct DeltaTerms16 {
  const scalar_t* x_adv;
  const grad_t* grad;
  const scalar_t* x;
  float* delta;
  float* xs;
  float inverse_norm, alpha;
  bool targeted;
  FASTADV_CPU_TARGET FloatLanes lanes(int64_t i) const {
    const FloatLanes xa = load_float_lanes(x_adv + i), xi = load_float_lanes(x + i);
    if constexpr (kStoreX) store_lanes(xs + i, xi);
    FloatLanes v;
    if constexpr (kStep) {
      FloatLanes e;
      if constexpr (kGradClean) {
        e = load_float_lanes(grad + i);
      } else {
        e = l2_grad_entry_lanes(load_float_lanes(grad + i));
      }
      v = l2_step_delta_lanes(xa, e * inverse_norm, xi, targeted ? -alpha : alpha);
    } else {
      v = xa - xi;
    }
    store_lanes(delta + i, v);
    return v;
  }
  FASTADV_CPU_TARGET float one(int64_t i) const {
    if constexpr (kStoreX) xs[i] = load_float(x[i]);
    return delta[i] = l2_delta_at<kStep>(x_adv, grad, x, i, inverse_norm, alpha, targeted);
  }
};

template <bool kStep, bool kStoreX, bool kGradClean, typename scalar_t, typename grad_t>
FASTADV_CPU_TARGET float sum_sq_delta_16bit(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x,
                                            const L2Scratch16& s, int64_t begin, int64_t end, float inverse_norm,
                                            float alpha, bool targeted) {
  return sum_in_chunks(
      [&](int64_t i) {
        return DeltaTerms16<kStep, kStoreX, kGradClean, scalar_t, grad_t>{
            x_adv + i, kStep ? grad + i : grad, x + i, s.delta + i, kStoreX ? s.x + i : nullptr, inverse_norm, alpha,
            targeted};
      },
      begin, end);
}

// One sample, or the team's part of it: pointers start at the sample, `base` is its offset in the
// tensor (for the per-channel bounds); out_t may be narrower than the inputs (widened samples, below).
template <bool kStep, typename scalar_t, typename grad_t, typename out_t>
void l2_sample(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x, out_t* out, int64_t base, int64_t b,
               const StepLaunch& launch, bool targeted, L2Team& team) {
  const StepParams& p = launch.params;
  const int64_t n = launch.geometry.sample_size;
  const float alpha = p.alpha.at(b, 0);
  L2Direction dir{1.f, 0.f, 0.f};
  L2Scratch16 scratch{nullptr, nullptr};  // 16-bit outputs: float32 scratch between the passes
  if constexpr (kIs16Bit<out_t>) scratch = l2_scratch_16bit(n, kIs16Bit<scalar_t>);
  // 16-bit outputs, whose delta pass reads the gradient again from the tensor: no NaN in it
  // (sum_sq_grad<false>).
  bool grad_clean = false;
  if constexpr (kStep) {
    float sum_sq = 0.f;
    if (kIs16Bit<out_t> && scratch.delta != nullptr) {
      sum_sq = team_sum(team, n, [&](int64_t i0, int64_t i1) {
        return sum_sq_grad<false>(grad, i0, i1);
      });
      grad_clean = !std::isnan(sum_sq);
    }
    if (!grad_clean) {  // the entries through l2_grad_entry (float32 outputs, a NaN entry)
      sum_sq = team_sum(team, n, [&](int64_t i0, int64_t i1) { return sum_sq_grad(grad, i0, i1); });
    }
    float infinite_count = 0.f, scaled_sum_sq = 0.f;
    const float scale = l2_grad_scale(sum_sq);
    if (scale != 1.f) {  // rare: a second pass over this sample only
      if (scale == kL2OverflowScale) {
        infinite_count = team_sum(team, n, [&](int64_t i0, int64_t i1) {
          return sum_grad_of(grad, i0, i1, [](float g) { return l2_infinite_count(g); });
        });
      }
      scaled_sum_sq = team_sum(team, n, [&](int64_t i0, int64_t i1) {
        return sum_grad_of(grad, i0, i1, [scale](float g) { return l2_scaled_square(g, scale); });
      });
    }
    dir = l2_direction(sum_sq, infinite_count, scaled_sum_sq);
  }
  // The passes with the direction's constants: a sample with a finite sum of squares (every one,
  // short of infinite gradient entries) takes the plain g * (1 / ||g||).
  auto delta_and_write = [&](auto direction) {
    const float eps = p.eps.at(b, 0);
    // float32 throughout, the fast direction: the terms stored in out (StoredDeltaTerms).
    constexpr bool kStoreDelta = kStep && std::is_same_v<scalar_t, float> && std::is_same_v<grad_t, float> &&
                                 std::is_same_v<out_t, float> && std::is_same_v<decltype(direction), float>;
    if constexpr (kStoreDelta) {
      float delta_sum_sq = team_sum(team, n, [&](int64_t i0, int64_t i1) {
        return sum_sq_delta_stored<kStep>(x_adv, grad, x, out, i0, i1, direction, alpha, targeted);
      });
      const float delta_scale = l2_delta_scale(delta_sum_sq, eps);
      if (delta_scale != 1.f) {  // rare: a second pass over this sample only
        delta_sum_sq = team_sum(team, n, [&](int64_t i0, int64_t i1) {
          return sum_scaled_sq_stored(out, i0, i1, delta_scale);
        });
      }
      const float factor = l2_rescale_factor(std::sqrt(delta_sum_sq), delta_scale, eps);
      for_team_blocks(team, n, [&](int64_t, int64_t begin, int64_t end) {
        for_each_run(base + begin, base + end, launch.geometry, launch.numel,
                     [&](int64_t i0, int64_t i1, int64_t rb, int64_t rc) {
                       write_l2_from_delta(x, out, i0 - base, i1 - base, factor, p.lower.at(rb, rc),
                                           p.upper.at(rb, rc));
                     });
      });
      return;
    }
    // 16-bit outputs, the fast direction: the passes through float32 scratch (L2Scratch16).
    if constexpr (kIs16Bit<out_t> && std::is_same_v<decltype(direction), float>) {
      auto passes = [&](auto x_stored, auto clean) {
        constexpr bool kXStored = decltype(x_stored)::value, kGradClean = decltype(clean)::value;
        float delta_sum_sq = team_sum(team, n, [&](int64_t i0, int64_t i1) {
          return sum_sq_delta_16bit<kStep, kXStored, kGradClean>(x_adv, grad, x, scratch, i0, i1, direction, alpha,
                                                                 targeted);
        });
        const float delta_scale = l2_delta_scale(delta_sum_sq, eps);
        if (delta_scale != 1.f) {  // rare: a second pass over this sample only
          delta_sum_sq = team_sum(team, n, [&](int64_t i0, int64_t i1) {
            return sum_scaled_sq_stored(scratch.delta, i0, i1, delta_scale);
          });
        }
        const float factor = l2_rescale_factor(std::sqrt(delta_sum_sq), delta_scale, eps);
        for_team_blocks(team, n, [&](int64_t, int64_t begin, int64_t end) {
          for_each_run(base + begin, base + end, launch.geometry, launch.numel,
                       [&](int64_t i0, int64_t i1, int64_t rb, int64_t rc) {
                         const int64_t o = i0 - base;
                         const float lower = p.lower.at(rb, rc), upper = p.upper.at(rb, rc);
                         if constexpr (kXStored) {
                           write_l2_from_delta_16bit(scratch.x + o, scratch.delta + o, out + o, i1 - i0, factor,
                                                     lower, upper);
                         } else {
                           write_l2_from_delta_16bit(x + o, scratch.delta + o, out + o, i1 - i0, factor, lower,
                                                     upper);
                         }
                       });
        });
      };
      if (scratch.delta != nullptr) {
        // the gradient read again from the tensor: without the NaN test where it has no NaN
        auto with_x = [&](auto clean) {
          if (scratch.x != nullptr) {
            passes(std::true_type{}, clean);
          } else {
            passes(std::false_type{}, clean);
          }
        };
        if (kStep && grad_clean) {
          with_x(std::true_type{});
        } else {
          with_x(std::false_type{});
        }
        return;
      }
    }
    float delta_sum_sq = team_sum(team, n, [&](int64_t i0, int64_t i1) {
      return sum_sq_delta<kStep>(x_adv, grad, x, i0, i1, direction, alpha, targeted);
    });
    const float delta_scale = l2_delta_scale(delta_sum_sq, eps);
    if (delta_scale != 1.f) {  // rare: a second pass over this sample only
      delta_sum_sq = team_sum(team, n, [&](int64_t i0, int64_t i1) {
        return sum_scaled_sq_delta<kStep>(x_adv, grad, x, i0, i1, direction, alpha, targeted, delta_scale);
      });
    }
    const float factor = l2_rescale_factor(std::sqrt(delta_sum_sq), delta_scale, eps);
    for_team_blocks(team, n, [&](int64_t, int64_t begin, int64_t end) {
      for_each_run(base + begin, base + end, launch.geometry, launch.numel,
                   [&](int64_t i0, int64_t i1, int64_t rb, int64_t rc) {
                     write_l2<kStep>(x_adv, grad, x, out, i0 - base, i1 - base, direction, alpha, targeted, factor,
                                     p.lower.at(rb, rc), p.upper.at(rb, rc));
                   });
    });
  };
  if constexpr (kStep) {
    if (dir.scale == 1.f && dir.infinite_entry == 0.f) {
      delta_and_write(dir.inverse_norm);
    } else {
      delta_and_write(dir);
    }
  } else {
    delta_and_write(0.f);  // unused by projections
  }
}

// ---- float32 steps, one thread per sample: one pass over memory per sample ----
// A sample's three passes (gradient sum, perturbation, write) run software-pipelined across the
// samples of a thread: one loop over a sample's positions does sample b's perturbation, b + 1's
// gradient sum and b - 1's write (l2_fused_pass). Each pass then reads the four streams from memory
// that the L-inf step reads (b + 1's gradient, b's x_adv and x, b's out, fetched for the stored
// perturbation) and three from the cache (b's gradient, b - 1's x and perturbation). It replaced two
// passes per sample (b's perturbation, then b + 1's gradient with b's write), one reading three
// streams from memory and the other one: the L2 step took 1.6x the L-inf step's time on the CIFAR
// batch, then 1.15-1.2x (one thread, AVX2 EPYC;
// benchmarks/results/step_copy_ratio_cpu_amd_epyc_avx2_l2_f32_fused.md), and 1.10-1.13x with all
// four memory streams prefetched and the bounds splat per chunk (FusedDeltaTerms, NextTerms;
// benchmarks/results/step_copy_ratio_cpu_amd_epyc_avx2_l2_f32_prefetch.md, which also lists the
// variants that were slower: reversed chunks, streaming stores, more prefetches).
// Alternating the two loops chunk by chunk (1024 elements) instead of element by element gained
// nothing.
// What keeps it at 1.05-1.15x the L-inf step's time on the CIFAR batch is the three streams each
// pass reads back from L2: seven cache lines come into L1 per line of output, against the L-inf
// step's four. A re-read comes a whole sample after the first read (a sample's norm needs all of
// it), and a CIFAR pass touches 7 x 12 KB against a 32 KB L1, so no order of the positions keeps
// those lines in L1. A diagnostic build that read b + 1's gradient and b's x in place of b's
// gradient and b - 1's x (the same work on lines already in L1, wrong values) ran at the L-inf
// step's time. No faster (benchmarks/results/step_copy_ratio_cpu_amd_epyc_avx2_l2_f32_fills.md):
// the re-read streams prefetched 64 or 128 elements ahead, b - 1's write run backwards from the end
// (its first lines the last that b - 1's pass touched), prefetchnta for x_adv, prefetchw for out.

// Elements ahead that l2_fused_pass prefetches its four memory streams: 1 KB. The loop carries
// about three times the L-inf step's instructions per cache line, so the out-of-order window alone
// keeps fewer lines in flight; 5-10% off the CIFAR and ImageNet batches (256 and 512 elements
// alike; 128 less, 1024 slower). (Those measurements prefetched the next gradient only: see
// FusedDeltaTerms. With all four streams prefetched, 512 was no better than 256 on CIFAR.)
constexpr int64_t kL2FusedPrefetch = 256;

// Two sums of squares over the same n positions in one loop, each term for term, accumulator for
// accumulator and in the order sum_squares adds them (so each has sum_squares' bits); every
// kSumAccumulators vectors, each prefetches `ahead` elements on. Each vector position loads all
// that both sides read before either stores (lanes, then store): with b - 1's output stored first,
// the loads of the same position that followed it (b's x_adv, x and gradients, at the same offset
// within a 4 KB page when the tensors are page-aligned: samples are 12 KB apart on CIFAR) came
// after a store they could be taken to alias (its own share of the gain is within the noise of
// this host; measured together with FusedDeltaTerms' prefetches). The order changes no value: a
// position's stores go to b - 1's and b's out, which no later load of that position reads (out
// may be x_adv: b's x_adv is loaded before b's store).
template <typename TermsA, typename TermsB>
FASTADV_CPU_TARGET inline void sum_squares_pair(const TermsA& a, const TermsB& b, int64_t n, float& total_a,
                                                float& total_b, int64_t ahead) {
  FloatLanes acc_a[kSumAccumulators] = {}, acc_b[kSumAccumulators] = {};
  int64_t i = 0;
  for (; i + kSumAccumulators * kLanes <= n; i += kSumAccumulators * kLanes) {
    a.prefetch(i + ahead);
    b.prefetch(i + ahead);
    for (int k = 0; k < kSumAccumulators; ++k) {
      const int64_t j = i + k * kLanes;
      const auto la = a.lanes(j);
      const FloatLanes vb = b.lanes(j);
      a.store(j, la);
      b.store(j, vb);
      const FloatLanes va = a.term(la);
      acc_a[k] += va * va;
      acc_b[k] += vb * vb;
    }
  }
  for (; i + kLanes <= n; i += kLanes) {
    const auto la = a.lanes(i);
    const FloatLanes vb = b.lanes(i);
    a.store(i, la);
    b.store(i, vb);
    const FloatLanes va = a.term(la);
    acc_a[0] += va * va;
    acc_b[0] += vb * vb;
  }
  const FloatLanes lanes_a = (acc_a[0] + acc_a[1]) + (acc_a[2] + acc_a[3]);
  const FloatLanes lanes_b = (acc_b[0] + acc_b[1]) + (acc_b[2] + acc_b[3]);
  float sa = 0.f, sb = 0.f;
  for (int k = 0; k < kLanes; ++k) sa += lanes_a[k];
  for (int k = 0; k < kLanes; ++k) sb += lanes_b[k];
  for (; i < n; ++i) {
    const float va = a.one(i);
    sa += va * va;
    const float vb = b.one(i);
    sb += vb * vb;
  }
  total_a = sa;
  total_b = sb;
}

// The cache lines of kSumAccumulators vectors from p + i on (sum_squares_pair's step), for reading
// (kWrite false) or for ownership (the lines will be written; the avx2 and avx512 targets have no
// PRFCHW, so gcc makes that a prefetcht0 too).
//
// This and the terms' prefetch members are always inlined. A function whose body is only
// __builtin_prefetch calls has no side effects in gcc's eyes (gcc 12: local-pure-const marks it
// const), so a call of it that the early inliner leaves alone is deleted as dead code (cddce1). It
// happened to FusedDeltaTerms::prefetch, whose three prefetch_lines loops made it too big to inline
// early: the fused pass lost the prefetches of x_adv, x and out (objdump -d of the avx2 build: 2
// prefetcht0 per loop step, the next gradient's, instead of 8), and NextTerms' single loop was
// inlined and kept its two. Inlined before that analysis, each call is the prefetches themselves.
constexpr int64_t kFloatsPerLine = 16;
template <bool kWrite = false>
FASTADV_CPU_TARGET inline __attribute__((always_inline)) void prefetch_lines(const float* p, int64_t i) {
  for (int64_t j = 0; j < kSumAccumulators * kLanes; j += kFloatsPerLine) __builtin_prefetch(p + i + j, kWrite, 3);
}

// The perturbation's terms of sample b (StoredDeltaTerms, float32), prefetching its streams; lanes
// computes a vector of terms, store keeps it (sum_squares_pair's order).
struct FusedDeltaTerms : StoredDeltaTerms<true, float, float> {
  FASTADV_CPU_TARGET inline __attribute__((always_inline)) void prefetch(int64_t i) const {
    prefetch_lines(terms.x_adv, i);
    prefetch_lines(terms.x, i);
    prefetch_lines<true>(delta, i);
  }
  FASTADV_CPU_TARGET FloatLanes lanes(int64_t i) const { return terms.lanes(i); }
  FASTADV_CPU_TARGET void store(int64_t i, FloatLanes v) const { store_lanes(delta + i, v); }
};

// The other half of l2_fused_pass: the gradient terms of the next sample (when kGrad; else zeros,
// discarded) and, when kWrite, the write of the previous one from its stored perturbation
// (write_l2_from_delta on whole vectors). Pointers start at the sample; at(i) moves them to a chunk.
// lanes loads a vector position (the gradient's terms, the output computed), store writes the
// output, term gives the gradient's terms (sum_squares_pair's order).
template <bool kGrad, bool kWrite>
struct NextTerms {
  const float* grad;
  const float* x;
  float* out;
  float factor, lower, upper;
  // lower and upper in every lane, set by at() (a target function, so splat_lanes inlines), once
  // per chunk: splat_lanes in the loop became eight vinsertps per bound per vector step and pushed
  // an accumulator to the stack; splatting in l2_float_samples (no target attribute: out-of-line
  // 256-bit calls from SSE code) made the CIFAR step slower (1.38x the L-inf step's time, 1.20 before).
  FloatLanes lower_lanes, upper_lanes;
  FASTADV_CPU_TARGET NextTerms at(int64_t i) const {
    NextTerms r = *this;
    r.lower_lanes = splat_lanes(lower);
    r.upper_lanes = splat_lanes(upper);
    if constexpr (kGrad) r.grad += i;
    if constexpr (kWrite) {
      r.x += i;
      r.out += i;
    }
    return r;
  }
  FASTADV_CPU_TARGET inline __attribute__((always_inline)) void prefetch(int64_t i) const {  // see prefetch_lines
    if constexpr (kGrad) prefetch_lines(grad, i);
  }
  struct Lanes {
    FloatLanes grad, output;
  };
  FASTADV_CPU_TARGET Lanes lanes(int64_t i) const {
    Lanes r{};
    if constexpr (kWrite) {
      r.output = l2_output_lanes(load_lanes(x + i), load_lanes(out + i), factor, lower_lanes, upper_lanes);
    }
    if constexpr (kGrad) r.grad = l2_grad_entry_lanes(load_lanes(grad + i));
    return r;
  }
  FASTADV_CPU_TARGET void store(int64_t i, const Lanes& v) const {
    if constexpr (kWrite) store_lanes(out + i, v.output);
  }
  FASTADV_CPU_TARGET FloatLanes term(const Lanes& v) const { return v.grad; }
  FASTADV_CPU_TARGET float one(int64_t i) const {
    if constexpr (kWrite) out[i] = l2_output(x[i], out[i], factor, lower, upper);
    if constexpr (kGrad) {
      return l2_grad_entry(grad[i]);
    } else {
      return 0.f;
    }
  }
};

// One pass over the positions of sample b: its perturbation stored into out (FusedDeltaTerms) and
// its sum of squares, with `next`'s work (NextTerms) on the same positions. Each sum in
// sum_sq_grad's and sum_sq_delta_stored's chunks, the kL2Block blocks added in block order as
// team_sum adds them for a team of one: the bits of the passes it replaces.
template <typename Next>
FASTADV_CPU_TARGET void l2_fused_pass(const Next& next, const float* x_adv, const float* grad, const float* x,
                                      float* out, int64_t n, float inverse_norm, float alpha, bool targeted,
                                      float& next_sum, float& delta_sum) {
  float next_total = 0.f, delta_total = 0.f;
  for (int64_t begin = 0; begin < n; begin += kL2Block) {
    const int64_t end = std::min(n, begin + kL2Block);
    float next_block = 0.f, delta_block = 0.f;
    for (int64_t i = begin; i < end; i += kSumChunk) {
      const FusedDeltaTerms delta{{{x_adv + i, grad + i, x + i, inverse_norm, alpha, targeted}, out + i}};
      float a = 0.f, b = 0.f;
      sum_squares_pair(next.at(i), delta, std::min(kSumChunk, end - i), a, b, kL2FusedPrefetch);
      next_block += a;
      delta_block += b;
    }
    next_total += next_block;
    delta_total += delta_block;
  }
  next_sum = next_total;
  delta_sum = delta_total;
}

// The float32 step over samples [first, last) of one thread (one thread per sample), bounds
// constant within each sample: l2_fused_pass per sample, the first sample's gradient summed alone
// and the last sample written alone. `out` may be x_adv (an in-place step): b's pass reads b's
// x_adv before it stores b's perturbation there, and b - 1's x_adv is no longer read. A sample whose
// gradient's sum of squares leaves float32's range (rare) goes through l2_sample (which sums its
// gradient again), its neighbours' passes then run without it.
template <typename scalar_t, typename grad_t>
void l2_float_samples(const scalar_t* x_adv_in, const grad_t* grad_in, const scalar_t* x_in, scalar_t* out_in,
                      int64_t first, int64_t last, const StepLaunch& launch, bool targeted, L2Team& team) {
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<grad_t, float>) {
    const StepParams& p = launch.params;
    const int64_t n = launch.geometry.sample_size;
    const float* x_adv = x_adv_in;
    const float* grad = grad_in;
    const float* x = x_in;
    float* out = out_in;
    L2PendingWrite pending{nullptr, nullptr, 0.f, 0.f, 0.f, false};
    auto flush = [&]() {
      if (pending.valid) write_l2_from_delta(pending.x, pending.out, 0, n, pending.factor, pending.lower, pending.upper);
      pending.valid = false;
    };
    bool have_sum = false;
    float sum_sq = 0.f;
    for (int64_t b = first; b < last; ++b) {
      const int64_t base = b * n;
      if (!have_sum) sum_sq = team_sum(team, n, [&](int64_t i0, int64_t i1) { return sum_sq_grad(grad + base, i0, i1); });
      if (l2_grad_scale(sum_sq) != 1.f) {  // rare: the general passes, the whole sample
        flush();
        l2_sample<true>(x_adv + base, grad + base, x + base, out + base, base, b, launch, targeted, team);
        have_sum = false;
        continue;
      }
      const float inverse_norm = l2_direction(sum_sq, 0.f, 0.f).inverse_norm;
      const float alpha = p.alpha.at(b, 0), eps = p.eps.at(b, 0);
      const bool has_next = b + 1 < last;
      const float* grad_next = has_next ? grad + base + n : nullptr;
      float next_sum = 0.f, delta_sum_sq = 0.f;
      auto pass = [&](auto next) {
        l2_fused_pass(next, x_adv + base, grad + base, x + base, out + base, n, inverse_norm, alpha, targeted,
                      next_sum, delta_sum_sq);
      };
      const L2PendingWrite& w = pending;
      if (has_next && w.valid) {
        pass(NextTerms<true, true>{grad_next, w.x, w.out, w.factor, w.lower, w.upper, {}, {}});
      } else if (has_next) {
        pass(NextTerms<true, false>{grad_next, nullptr, nullptr, 0.f, 0.f, 0.f, {}, {}});
      } else if (w.valid) {
        pass(NextTerms<false, true>{nullptr, w.x, w.out, w.factor, w.lower, w.upper, {}, {}});
      } else {
        pass(NextTerms<false, false>{nullptr, nullptr, nullptr, 0.f, 0.f, 0.f, {}, {}});
      }
      pending.valid = false;
      sum_sq = next_sum;
      have_sum = has_next;
      const float delta_scale = l2_delta_scale(delta_sum_sq, eps);
      if (delta_scale != 1.f) {  // rare: a second pass over this sample only
        delta_sum_sq = team_sum(team, n, [&](int64_t i0, int64_t i1) {
          return sum_scaled_sq_stored(out + base, i0, i1, delta_scale);
        });
      }
      const float factor = l2_rescale_factor(std::sqrt(delta_sum_sq), delta_scale, eps);
      pending = {x + base, out + base, factor, p.lower.at(b, 0), p.upper.at(b, 0), true};
    }
    flush();
  }
}

// ---- float32 steps: pipelined across samples, or sample by sample ----
// l2_float_samples and l2_sample give the same bits (the same sums, added in the same order), but
// which one is faster depends on the core. On the AMD EPYC Zen 3 host (AVX2 build) the pipelined
// passes took the CIFAR batch from 62% to 78% of copy (benchmarks/README.md). On the Zen 5 host,
// in both the AVX-512 and the AVX2 build, sample by sample was 1.1-1.35x faster at every sample
// size from 3x16x16 to 3x224x224. So the first float32 L2 step of a process (each build on its
// own) times both on a batch of 64 CIFAR-size samples, one thread, called in turn for
// kL2PathRounds rounds (the first call took 4 ms instead of 0.15 ms on the Zen 5 host), and keeps
// the faster by the median of the per-round ratios. FASTADV_CPU_L2_PIPELINE=on or off chooses
// instead (step_cpu.cpp, docs/backends.md).
constexpr int kL2PathRounds = 9;

bool l2_pipelined_measured_faster() {
  constexpr int64_t kSamples = 64, kSize = 3 * 32 * 32, kNumel = kSamples * kSize;
  std::vector<float> buffers(4 * kNumel);
  float* x_adv = buffers.data();
  float* grad = x_adv + kNumel;
  float* x = grad + kNumel;
  float* out = x + kNumel;
  uint32_t state = 12345u;  // a fixed linear congruential sequence: values in [0, 1)
  auto next = [&state]() {
    state = state * 1664525u + 1013904223u;
    return static_cast<float>(state >> 8) * 0x1p-24f;
  };
  for (int64_t i = 0; i < kNumel; ++i) {
    x[i] = next();
    x_adv[i] = std::min(1.f, x[i] + 0.01f * next());
    grad[i] = next() - 0.5f;
  }
  StepLaunch launch{kNumel, Geometry{kSize, 32 * 32, 3, false, false}, StepParams{}};
  launch.params.eps.value = 0.5f;
  launch.params.alpha.value = 0.1f;
  launch.params.lower.value = 0.f;
  launch.params.upper.value = 1.f;
  const int64_t blocks = (kSize + kL2Block - 1) / kL2Block;
  std::vector<float> sums(2 * blocks);
  L2Team team{0, blocks, blocks, false, {sums.data(), sums.data() + blocks}, 0};
  auto seconds = [](auto&& run) {
    const auto start = std::chrono::steady_clock::now();
    run();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  std::vector<double> ratios;  // pipelined time / sample-by-sample time, per round
  for (int round = 0; round < kL2PathRounds + 1; ++round) {
    const double pipelined = seconds([&] { l2_float_samples(x_adv, grad, x, out, 0, kSamples, launch, false, team); });
    const double by_sample = seconds([&] {
      for (int64_t b = 0; b < kSamples; ++b) {
        l2_sample<true>(x_adv + b * kSize, static_cast<const float*>(grad + b * kSize), x + b * kSize,
                        out + b * kSize, b * kSize, b, launch, false, team);
      }
    });
    if (round > 0) ratios.push_back(pipelined / by_sample);  // round 0 warms the caches up
  }
  std::nth_element(ratios.begin(), ratios.begin() + ratios.size() / 2, ratios.end());
  return ratios[ratios.size() / 2] < 1.0;
}

// Whether this build's float32 L2 step pipelines its passes across samples (l2_float_samples).
bool l2_pipelined() {
  const int setting = cpu_l2_pipeline_setting();
  if (setting >= 0) return setting == 1;
  static const bool pipelined = l2_pipelined_measured_faster();
  return pipelined;
}

template <bool kStep, typename scalar_t, typename grad_t>
void l2_cpu(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x, scalar_t* out, const StepLaunch& launch,
            bool targeted) {
  const int64_t n = launch.geometry.sample_size;
  const int64_t batch = launch.numel / n;
  const int64_t blocks = (n + kL2Block - 1) / kL2Block;
  const int threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  // float16 in portable code (whose conversion costs about ten vector instructions; bfloat16's is a
  // shift): widen a sample once into this thread's float32 scratch when the scratch stays in a
  // core's cache (CIFAR-size samples ran 1.7x faster), so the three passes convert each input once
  // instead of up to three times. Larger samples (ImageNet-size: 1.8 MB of scratch) ran slower that
  // way. The hardware conversions (one instruction per vector) convert chunk by chunk instead.
  constexpr bool kHardwareHalf = FASTADV_CPU_HALF_LANES > 0;
  constexpr bool kHasFloat16 = std::is_same_v<scalar_t, c10::Half> || std::is_same_v<grad_t, c10::Half>;
  const bool widen_first = kHasFloat16 && !kHardwareHalf && 3 * n * static_cast<int64_t>(sizeof(float)) <= kWidenScratchBytes;
  // A batch smaller than the thread count shares each sample between the threads (L2Team).
  const bool shared = threads > 1 && batch < threads;
  bool pipelined = false;  // float32 steps: across samples, or sample by sample (l2_pipelined)
  if constexpr (kStep && std::is_same_v<scalar_t, float> && std::is_same_v<grad_t, float>) {
    if (!shared) pipelined = l2_pipelined();
  }
  std::vector<float> shared_sums(shared ? 2 * blocks : 0);
  auto body = [&](int tid, int team_size) {
    L2Team team{0, blocks, blocks, false, {nullptr, nullptr}, 0};
    std::vector<float> own_sums;
    int64_t first = 0, last = batch;
    if (shared) {
      team.first_block = blocks * tid / team_size;
      team.last_block = blocks * (tid + 1) / team_size;
      team.shared = team_size > 1;
      team.sums[0] = shared_sums.data();
      team.sums[1] = shared_sums.data() + blocks;
    } else {
      own_sums.resize(2 * blocks);
      team.sums[0] = own_sums.data();
      team.sums[1] = own_sums.data() + blocks;
      first = batch * tid / team_size;
      last = batch * (tid + 1) / team_size;
    }
    // float32 steps, one thread per sample, bounds constant within a sample: the passes pipelined
    // across samples (l2_float_samples) where this host runs that faster (l2_pipelined).
    if constexpr (kStep && std::is_same_v<scalar_t, float> && std::is_same_v<grad_t, float>) {
      const StepParams& p = launch.params;
      const bool uniform_bounds = (!p.lower.varies() || p.lower.stride_c == 0) &&
                                  (!p.upper.varies() || p.upper.stride_c == 0);
      if (pipelined && uniform_bounds) {
        l2_float_samples(x_adv, grad, x, out, first, last, launch, targeted, team);
        return;
      }
    }
    for (int64_t b = first; b < last; ++b) {
      const int64_t base = b * n;
      if (!widen_first || shared) {
        l2_sample<kStep>(x_adv + base, kStep ? grad + base : grad, x + base, out + base, base, b, launch, targeted,
                         team);
      } else {
        static thread_local std::vector<float> scratch;  // reused across calls
        scratch.resize(static_cast<size_t>(3 * n));
        float* xa_f = scratch.data();
        float* x_f = xa_f + n;
        float* g_f = x_f + n;
        widen(x_adv + base, xa_f, 0, n);
        widen(x + base, x_f, 0, n);
        if constexpr (kStep) widen(grad + base, g_f, 0, n);
        l2_sample<kStep>(xa_f, static_cast<const float*>(g_f), x_f, out + base, base, b, launch, targeted, team);
      }
    }
  };
  if (threads == 1) {
    body(0, 1);
    return;
  }
  // One parallel region for the whole batch (a shared sample's barriers need every thread of the
  // team in it), marked as torch's so that nested at::parallel_for calls run inline.
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
  {
    at::internal::ThreadIdGuard tid_guard(omp_get_thread_num());
    c10::ParallelGuard guard(true);
    body(omp_get_thread_num(), omp_get_num_threads());
  }
#else
  body(0, 1);
#endif
}

// The entry points of this build: dtype dispatch, then the loop (arguments already checked).
void step_loop(bool l2, const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x, const at::Tensor& out,
               const StepLaunch& launch, bool targeted) {
  dispatch_float_dtype(x_adv.scalar_type(), "x_adv", [&](auto scalar_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    dispatch_float_dtype(grad.scalar_type(), "grad", [&](auto grad_tag) {
      using grad_t = typename decltype(grad_tag)::type;
      const auto kernel = l2 ? &l2_cpu<true, scalar_t, grad_t> : &linf_cpu<true, scalar_t, grad_t>;
      kernel(x_adv.const_data_ptr<scalar_t>(), grad.const_data_ptr<grad_t>(), x.const_data_ptr<scalar_t>(),
             out.mutable_data_ptr<scalar_t>(), launch, targeted);
    });
  });
}

void project_loop(bool l2, const at::Tensor& x_adv, const at::Tensor& x, const at::Tensor& out,
                  const StepLaunch& launch) {
  dispatch_float_dtype(x_adv.scalar_type(), "x_adv", [&](auto scalar_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    const auto kernel = l2 ? &l2_cpu<false, scalar_t, scalar_t> : &linf_cpu<false, scalar_t, scalar_t>;
    kernel(x_adv.const_data_ptr<scalar_t>(), nullptr, x.const_data_ptr<scalar_t>(),
           out.mutable_data_ptr<scalar_t>(), launch, false);
  });
}

}  // namespace

const CpuLoops& FASTADV_CPU_LOOPS() {
  static const CpuLoops loops{&step_loop, &project_loop, &l2_pipelined};
  return loops;
}

}  // namespace fastadv
