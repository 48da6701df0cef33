// CUDA kernels. Each thread moves 16-byte packs of x_adv / x / out (and the matching grad pack)
// when every pointer is aligned for it, with a scalar tail; index arithmetic is 32-bit when the
// tensor allows it (integer division is the costly part of per-channel parameters) and 64-bit
// otherwise. Launcher order: checks -> device guard -> current stream -> early return on empty
// -> dtype dispatch -> launch -> launch check.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../dispatch.h"
#include "../step_args.h"
#include "../step_math.h"

namespace fastadv {
namespace {

constexpr int kThreads = 256;
constexpr int kBytesPerPack = 16;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <bool kStep, typename scalar_t, typename grad_t, typename index_t>
__device__ __forceinline__ float element_value(float x_adv, grad_t grad, float x, index_t i, const StepParams& p,
                                               const Geometry& g, bool targeted) {
  index_t b = 0, c = 0;
  if (g.needs_sample) b = i / static_cast<index_t>(g.sample_size);
  if (g.needs_channel) c = (i / static_cast<index_t>(g.channel_div)) % static_cast<index_t>(g.channels);
  const float eps = p.eps.at(b, c), lower = p.lower.at(b, c), upper = p.upper.at(b, c);
  if constexpr (kStep) {
    return linf_step_value(x_adv, static_cast<float>(grad), x, eps, p.alpha.at(b, c), lower, upper, targeted);
  } else {
    return linf_project_value(x_adv, x, eps, lower, upper);
  }
}

// x_adv is not __restrict__: out may be x_adv (in place). Each element is read before it is
// written by the same thread, so aliasing is safe.
template <bool kStep, int kVec, typename scalar_t, typename grad_t, typename index_t>
__global__ void linf_kernel(const scalar_t* x_adv, const grad_t* __restrict__ grad,
                            const scalar_t* __restrict__ x, scalar_t* out, index_t numel, StepParams p,
                            Geometry g, bool targeted) {
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  const index_t first = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const index_t packs = numel / kVec;
  for (index_t v = first; v < packs; v += stride) {
    const Pack<scalar_t, kVec> a = reinterpret_cast<const Pack<scalar_t, kVec>*>(x_adv)[v];
    const Pack<scalar_t, kVec> xv = reinterpret_cast<const Pack<scalar_t, kVec>*>(x)[v];
    Pack<grad_t, kVec> gv;
    if constexpr (kStep) gv = reinterpret_cast<const Pack<grad_t, kVec>*>(grad)[v];
    Pack<scalar_t, kVec> r;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const grad_t gk = kStep ? gv.v[k] : grad_t(0);
      r.v[k] = static_cast<scalar_t>(element_value<kStep, scalar_t>(
          static_cast<float>(a.v[k]), gk, static_cast<float>(xv.v[k]), v * kVec + k, p, g, targeted));
    }
    reinterpret_cast<Pack<scalar_t, kVec>*>(out)[v] = r;
  }
  for (index_t i = packs * kVec + first; i < numel; i += stride) {
    const grad_t gi = kStep ? grad[i] : grad_t(0);
    out[i] = static_cast<scalar_t>(element_value<kStep, scalar_t>(static_cast<float>(x_adv[i]), gi,
                                                                  static_cast<float>(x[i]), i, p, g, targeted));
  }
}

bool aligned_to(const void* ptr, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(bytes) == 0;
}

int max_resident_blocks(int device) {
  static int cache[64] = {0};
  if (device < 64 && cache[device] > 0) return cache[device];
  int sms = 0, threads_per_sm = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, device));
  const int blocks = std::max(1, sms * (threads_per_sm / kThreads));
  if (device < 64) cache[device] = blocks;
  return blocks;
}

template <bool kStep, typename scalar_t, typename grad_t>
void launch_linf(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x, scalar_t* out,
                 const StepLaunch& launch, bool targeted, int device) {
  constexpr int kVec = kBytesPerPack / sizeof(scalar_t);
  const bool vectorize = aligned_to(x_adv, kBytesPerPack) && aligned_to(x, kBytesPerPack) &&
                         aligned_to(out, kBytesPerPack) && (!kStep || aligned_to(grad, sizeof(grad_t) * kVec));
  const int64_t numel = launch.numel;
  const int64_t work = vectorize ? std::max<int64_t>(numel / kVec, numel % kVec) : numel;
  // A grid-stride loop over at most a few waves of resident blocks: enough to saturate memory.
  const int64_t blocks = std::min<int64_t>((work + kThreads - 1) / kThreads, 4LL * max_resident_blocks(device));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  auto go = [&](auto index_tag) {
    using index_t = decltype(index_tag);
    if (vectorize) {
      linf_kernel<kStep, kVec, scalar_t, grad_t, index_t><<<blocks, kThreads, 0, stream>>>(
          x_adv, grad, x, out, static_cast<index_t>(numel), launch.params, launch.geometry, targeted);
    } else {
      linf_kernel<kStep, 1, scalar_t, grad_t, index_t><<<blocks, kThreads, 0, stream>>>(
          x_adv, grad, x, out, static_cast<index_t>(numel), launch.params, launch.geometry, targeted);
    }
  };
  // 32-bit indices while every index (plus one grid stride of overshoot) fits.
  const int64_t overshoot = blocks * kThreads;
  if (numel + overshoot < std::numeric_limits<int32_t>::max()) {
    go(int32_t{});
  } else {
    go(int64_t{});
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void linf_step_out_cuda(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x,
                        const std::optional<at::Tensor>& eps, const std::optional<at::Tensor>& alpha,
                        const std::optional<at::Tensor>& lower, const std::optional<at::Tensor>& upper,
                        c10::ArrayRef<double> values, bool targeted, const at::Tensor& out) {
  const StepLaunch launch = check_step_args("fastadv::linf_step_out", x_adv, grad, x, eps, alpha, lower, upper,
                                            values, out, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(x_adv.device());
  if (launch.numel == 0) return;
  dispatch_float_dtype(x_adv.scalar_type(), "x_adv", [&](auto scalar_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    dispatch_float_dtype(grad.scalar_type(), "grad", [&](auto grad_tag) {
      using grad_t = typename decltype(grad_tag)::type;
      launch_linf<true>(x_adv.const_data_ptr<scalar_t>(), grad.const_data_ptr<grad_t>(),
                        x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), launch, targeted,
                        x_adv.get_device());
    });
  });
}

void linf_project_out_cuda(const at::Tensor& x_adv, const at::Tensor& x, const std::optional<at::Tensor>& eps,
                           const std::optional<at::Tensor>& lower, const std::optional<at::Tensor>& upper,
                           c10::ArrayRef<double> values, const at::Tensor& out) {
  const StepLaunch launch = check_step_args("fastadv::linf_project_out", x_adv, std::nullopt, x, eps,
                                            std::nullopt, lower, upper, values, out, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(x_adv.device());
  if (launch.numel == 0) return;
  dispatch_float_dtype(x_adv.scalar_type(), "x_adv", [&](auto scalar_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    launch_linf<false, scalar_t, scalar_t>(x_adv.const_data_ptr<scalar_t>(), nullptr,
                                           x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                           launch, false, x_adv.get_device());
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastadv, CUDA, m) {
  m.impl("linf_step_out", &linf_step_out_cuda);
  m.impl("linf_project_out", &linf_project_out_cuda);
}

}  // namespace fastadv
