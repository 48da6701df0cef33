// CPU kernels: an at::parallel_for (OpenMP) over the flat memory order. Work is cut into runs
// of elements that share one (sample, channel), so inside a run the parameters are constants
// and the inner loop is a plain loop the compiler vectorizes.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <functional>
#include <type_traits>
#include <vector>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "../dispatch.h"
#include "../step_args.h"
#include "../step_math.h"

namespace fastadv {
namespace {

constexpr int64_t kGrain = 1 << 15;
constexpr int64_t kWidenScratchBytes = 512 * 1024;

// Loads and stores through float. c10::Half's conversions keep the loop from vectorizing (float16
// ran 10x slower than bfloat16), and so do GCC's _Float16 stores. These are the branch-free
// IEEE conversions of the FP16 library (which c10 also uses), written with selects that gcc
// turns into vector blends. Rounding is to nearest even, bit for bit as torch rounds.
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

struct Scalars {
  float eps, alpha, lower, upper;
};

Scalars params_at(const StepParams& p, int64_t b, int64_t c) {
  return {p.eps.at(b, c), p.alpha.at(b, c), p.lower.at(b, c), p.upper.at(b, c)};
}

// The inner loop is compiled for AVX-512 and AVX2 as well as the baseline ISA, and the loader
// picks the widest the CPU has: with 16-byte SSE vectors the loop is compute-bound (about 3x
// slower than AVX-512 on the development machine), with wide vectors it is memory-bound.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FASTADV_WIDE_SIMD __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTADV_WIDE_SIMD
#endif

template <bool kStep, typename scalar_t, typename grad_t>
FASTADV_WIDE_SIMD void run_uniform(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x, scalar_t* out, int64_t begin,
                 int64_t end, Scalars s, bool targeted) {
  for (int64_t i = begin; i < end; ++i) {
    const float xi = load_float(x[i]);
    const float ai = load_float(x_adv[i]);
    if constexpr (kStep) {
      out[i] = store_float<scalar_t>(
          linf_step_value(ai, load_float(grad[i]), xi, s.eps, s.alpha, s.lower, s.upper, targeted));
    } else {
      out[i] = store_float<scalar_t>(linf_project_value(ai, xi, s.eps, s.lower, s.upper));
    }
  }
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

// ---- L2: per sample, pass 1 sums grad^2, pass 2 sums delta^2, pass 3 writes. Samples are spread
// over the threads, so each sample's passes run on one core while it sits in that core's cache
// (a 3x224x224 float32 sample is 1.8 MB over its three inputs). A batch smaller than the thread
// count splits each pass over the threads instead (nested parallel_for runs inline). ----

template <typename grad_t>
FASTADV_WIDE_SIMD float sum_sq_grad(const grad_t* grad, int64_t begin, int64_t end) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = begin; i < end; ++i) {
    const float v = l2_grad_entry(load_float(grad[i]));
    acc += v * v;
  }
  return acc;
}

template <bool kStep, typename scalar_t, typename grad_t>
inline float l2_delta_at(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x, int64_t i,
                         float inverse_grad_norm, float alpha, bool targeted) {
  if constexpr (kStep) {
    return l2_step_delta(load_float(x_adv[i]), load_float(grad[i]), load_float(x[i]), inverse_grad_norm, alpha,
                         targeted);
  } else {
    return load_float(x_adv[i]) - load_float(x[i]);
  }
}

template <bool kStep, typename scalar_t, typename grad_t>
FASTADV_WIDE_SIMD float sum_sq_delta(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x, int64_t begin,
                                     int64_t end, float inverse_grad_norm, float alpha, bool targeted) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = begin; i < end; ++i) {
    const float d = l2_delta_at<kStep>(x_adv, grad, x, i, inverse_grad_norm, alpha, targeted);
    acc += d * d;
  }
  return acc;
}

template <bool kStep, typename scalar_t, typename grad_t, typename out_t>
FASTADV_WIDE_SIMD void write_l2(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x, out_t* out,
                                int64_t begin, int64_t end, float inverse_grad_norm, float alpha, bool targeted, float factor,
                                float lower, float upper) {
  for (int64_t i = begin; i < end; ++i) {
    const float d = l2_delta_at<kStep>(x_adv, grad, x, i, inverse_grad_norm, alpha, targeted);
    out[i] = store_float<out_t>(l2_output(load_float(x[i]), d, factor, lower, upper));
  }
}

template <typename T>
FASTADV_WIDE_SIMD void widen(const T* in, float* out, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) out[i] = load_float(in[i]);
}

template <typename F>
float parallel_sum(int64_t begin, int64_t end, F&& partial) {
  return at::parallel_reduce(
      begin, end, kGrain, 0.f, [&](int64_t b, int64_t e, float acc) { return acc + partial(b, e); },
      std::plus<float>());
}

// One sample: pointers start at the sample, `base` is its offset in the tensor (for the
// per-channel bounds); out_t may be narrower than the inputs (widened samples, below).
template <bool kStep, typename scalar_t, typename grad_t, typename out_t>
void l2_sample(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x, out_t* out, int64_t base, int64_t b,
               const StepLaunch& launch, bool targeted) {
  const StepParams& p = launch.params;
  const int64_t n = launch.geometry.sample_size;
  const float alpha = p.alpha.at(b, 0);
  float inverse_grad_norm = 0.f;
  if constexpr (kStep) {
    inverse_grad_norm = l2_inverse_norm(
        std::sqrt(parallel_sum(0, n, [&](int64_t i0, int64_t i1) { return sum_sq_grad(grad, i0, i1); })));
  }
  const float delta_norm = std::sqrt(parallel_sum(0, n, [&](int64_t i0, int64_t i1) {
    return sum_sq_delta<kStep>(x_adv, grad, x, i0, i1, inverse_grad_norm, alpha, targeted);
  }));
  const float factor = l2_rescale_factor(delta_norm, p.eps.at(b, 0));
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for_each_run(base + begin, base + end, launch.geometry, launch.numel,
                 [&](int64_t i0, int64_t i1, int64_t rb, int64_t rc) {
                   write_l2<kStep>(x_adv, grad, x, out, i0 - base, i1 - base, inverse_grad_norm, alpha, targeted, factor,
                                   p.lower.at(rb, rc), p.upper.at(rb, rc));
                 });
  });
}

template <bool kStep, typename scalar_t, typename grad_t>
void l2_cpu(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x, scalar_t* out, const StepLaunch& launch,
            bool targeted) {
  const int64_t n = launch.geometry.sample_size;
  // float16 (whose conversion costs about ten vector instructions; bfloat16's is a shift): widen a
  // sample once into this thread's float32 scratch when the scratch stays in a core's cache
  // (CIFAR-size samples ran 1.7x faster), so the three passes convert each input once instead of
  // up to three times. Larger samples (ImageNet-size: 1.8 MB of scratch) ran slower that way.
  constexpr bool kHasFloat16 = std::is_same_v<scalar_t, c10::Half> || std::is_same_v<grad_t, c10::Half>;
  const bool widen_first = kHasFloat16 && 3 * n * static_cast<int64_t>(sizeof(float)) <= kWidenScratchBytes;
  at::parallel_for(0, launch.numel / n, 1, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      const int64_t base = b * n;
      if (!widen_first) {
        l2_sample<kStep>(x_adv + base, kStep ? grad + base : grad, x + base, out + base, base, b, launch, targeted);
      } else {
        static thread_local std::vector<float> scratch;  // reused across calls
        scratch.resize(static_cast<size_t>(3 * n));
        float* xa_f = scratch.data();
        float* x_f = xa_f + n;
        float* g_f = x_f + n;
        at::parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) {
          widen(x_adv + base, xa_f, i0, i1);
          widen(x + base, x_f, i0, i1);
          if constexpr (kStep) widen(grad + base, g_f, i0, i1);
        });
        l2_sample<kStep>(xa_f, static_cast<const float*>(g_f), x_f, out + base, base, b, launch, targeted);
      }
    }
  });
}

// One entry point per op: checks, dtype dispatch, kernel.
template <bool kL2>
void step_out_cpu(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x,
                  const std::optional<at::Tensor>& eps, const std::optional<at::Tensor>& alpha,
                  const std::optional<at::Tensor>& lower, const std::optional<at::Tensor>& upper,
                  c10::ArrayRef<double> values, bool targeted, const at::Tensor& out) {
  const char* op = kL2 ? "fastadv::l2_step_out" : "fastadv::linf_step_out";
  const StepLaunch launch = kL2 ? check_l2_args(op, x_adv, grad, x, eps, alpha, lower, upper, values, out, c10::kCPU)
                                : check_step_args(op, x_adv, grad, x, eps, alpha, lower, upper, values, out, c10::kCPU);
  if (launch.numel == 0) return;
  dispatch_float_dtype(x_adv.scalar_type(), "x_adv", [&](auto scalar_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    dispatch_float_dtype(grad.scalar_type(), "grad", [&](auto grad_tag) {
      using grad_t = typename decltype(grad_tag)::type;
      const auto kernel = kL2 ? &l2_cpu<true, scalar_t, grad_t> : &linf_cpu<true, scalar_t, grad_t>;
      kernel(x_adv.const_data_ptr<scalar_t>(), grad.const_data_ptr<grad_t>(), x.const_data_ptr<scalar_t>(),
             out.mutable_data_ptr<scalar_t>(), launch, targeted);
    });
  });
}

template <bool kL2>
void project_out_cpu(const at::Tensor& x_adv, const at::Tensor& x, const std::optional<at::Tensor>& eps,
                     const std::optional<at::Tensor>& lower, const std::optional<at::Tensor>& upper,
                     c10::ArrayRef<double> values, const at::Tensor& out) {
  const char* op = kL2 ? "fastadv::l2_project_out" : "fastadv::linf_project_out";
  const auto check = kL2 ? &check_l2_args : &check_step_args;
  const StepLaunch launch =
      check(op, x_adv, std::nullopt, x, eps, std::nullopt, lower, upper, values, out, c10::kCPU);
  if (launch.numel == 0) return;
  dispatch_float_dtype(x_adv.scalar_type(), "x_adv", [&](auto scalar_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    const auto kernel = kL2 ? &l2_cpu<false, scalar_t, scalar_t> : &linf_cpu<false, scalar_t, scalar_t>;
    kernel(x_adv.const_data_ptr<scalar_t>(), nullptr, x.const_data_ptr<scalar_t>(),
           out.mutable_data_ptr<scalar_t>(), launch, false);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastadv, CPU, m) {
  m.impl("linf_step_out", &step_out_cpu<false>);
  m.impl("linf_project_out", &project_out_cpu<false>);
  m.impl("l2_step_out", &step_out_cpu<true>);
  m.impl("l2_project_out", &project_out_cpu<true>);
}

}  // namespace fastadv
