// CPU kernels: an at::parallel_for (OpenMP) over the flat memory order. Work is cut into runs
// of elements that share one (sample, channel), so inside a run the parameters are constants
// and the inner loop is a plain loop the compiler vectorizes.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../dispatch.h"
#include "../step_args.h"
#include "../step_math.h"

namespace fastadv {
namespace {

constexpr int64_t kGrain = 1 << 15;

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
    const float xi = static_cast<float>(x[i]);
    const float ai = static_cast<float>(x_adv[i]);
    if constexpr (kStep) {
      out[i] = static_cast<scalar_t>(
          linf_step_value(ai, static_cast<float>(grad[i]), xi, s.eps, s.alpha, s.lower, s.upper, targeted));
    } else {
      out[i] = static_cast<scalar_t>(linf_project_value(ai, xi, s.eps, s.lower, s.upper));
    }
  }
}

// Length of the runs over which every parameter is constant (always divides the tensor).
int64_t uniform_run_length(const Geometry& g, int64_t numel) {
  if (g.needs_channel) return g.channel_div;  // contiguous: a spatial plane; channels_last: 1
  if (g.needs_sample) return g.sample_size;
  return numel;
}

template <bool kStep, typename scalar_t, typename grad_t>
void linf_cpu(const at::Tensor& x_adv_t, const grad_t* grad, const at::Tensor& x_t, const at::Tensor& out_t,
              const StepLaunch& launch, bool targeted) {
  const scalar_t* x_adv = x_adv_t.const_data_ptr<scalar_t>();
  const scalar_t* x = x_t.const_data_ptr<scalar_t>();
  scalar_t* out = out_t.mutable_data_ptr<scalar_t>();
  const Geometry& g = launch.geometry;
  const StepParams& p = launch.params;
  const int64_t run = uniform_run_length(g, launch.numel);
  at::parallel_for(0, launch.numel, kGrain, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    while (i < end) {
      const int64_t run_end = std::min(end, (i / run + 1) * run);
      const int64_t b = g.needs_sample ? i / g.sample_size : 0;
      if (run > 1 || !g.needs_channel) {
        const int64_t c = g.needs_channel ? (i / g.channel_div) % g.channels : 0;
        run_uniform<kStep>(x_adv, grad, x, out, i, run_end, params_at(p, b, c), targeted);
        i = run_end;
      } else {
        // channels_last with per-channel parameters: walk the channels of each pixel.
        const int64_t pixel_end = std::min(end, (i / g.channels + 1) * g.channels);
        for (int64_t c = i % g.channels; i < pixel_end; ++i, ++c) {
          run_uniform<kStep>(x_adv, grad, x, out, i, i + 1, params_at(p, b, c), targeted);
        }
      }
    }
  });
}

void linf_step_out_cpu(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x,
                       const std::optional<at::Tensor>& eps, const std::optional<at::Tensor>& alpha,
                       const std::optional<at::Tensor>& lower, const std::optional<at::Tensor>& upper,
                       c10::ArrayRef<double> values, bool targeted, const at::Tensor& out) {
  const StepLaunch launch = check_step_args("fastadv::linf_step_out", x_adv, grad, x, eps, alpha, lower, upper,
                                            values, out, c10::DeviceType::CPU);
  if (launch.numel == 0) return;
  dispatch_float_dtype(x_adv.scalar_type(), "x_adv", [&](auto scalar_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    dispatch_float_dtype(grad.scalar_type(), "grad", [&](auto grad_tag) {
      using grad_t = typename decltype(grad_tag)::type;
      linf_cpu<true, scalar_t>(x_adv, grad.const_data_ptr<grad_t>(), x, out, launch, targeted);
    });
  });
}

void linf_project_out_cpu(const at::Tensor& x_adv, const at::Tensor& x, const std::optional<at::Tensor>& eps,
                          const std::optional<at::Tensor>& lower, const std::optional<at::Tensor>& upper,
                          c10::ArrayRef<double> values, const at::Tensor& out) {
  const StepLaunch launch = check_step_args("fastadv::linf_project_out", x_adv, std::nullopt, x, eps,
                                            std::nullopt, lower, upper, values, out, c10::DeviceType::CPU);
  if (launch.numel == 0) return;
  dispatch_float_dtype(x_adv.scalar_type(), "x_adv", [&](auto scalar_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    linf_cpu<false, scalar_t, scalar_t>(x_adv, nullptr, x, out, launch, false);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastadv, CPU, m) {
  m.impl("linf_step_out", &linf_step_out_cpu);
  m.impl("linf_project_out", &linf_project_out_cpu);
}

}  // namespace fastadv
