// CUDA kernels. Each thread moves 16-byte packs of x_adv / x / out (and the matching grad pack)
// when every pointer is aligned for it, with a scalar tail; index arithmetic is 32-bit when the
// tensor allows it (integer division is the costly part of per-channel parameters) and 64-bit
// otherwise. Launcher order: checks -> device guard -> current stream -> early return on empty
// -> dtype dispatch -> launch -> launch check.
#include <ATen/ops/empty.h>
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

// ---- L2 ----
// A sample of at most kThreads * kMaxPerThread elements is done by one block in one launch, held
// in registers between the two norms: 16 bytes per float32 element (grad, x_adv, x read once, out
// written once). Larger samples are split into chunks of kThreads * kMaxPerThread elements over
// three launches: partial sums of grad^2 (4 bytes/element), of delta^2 (12), then the write (16),
// 32 bytes per element. Every block sums its sample's partials in one fixed order, so results are
// deterministic (no atomics).
constexpr int kMaxPerThread = 16;
constexpr int64_t kL2Chunk = static_cast<int64_t>(kThreads) * kMaxPerThread;

// The sum of v over the block, returned to every thread (fixed reduction order).
__device__ float block_sum(float v) {
  __shared__ float warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.f;
  if (warp == 0) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (lane == 0) warp_sums[0] = v;
  }
  __syncthreads();
  v = warp_sums[0];
  __syncthreads();  // warp_sums may be reused by the next call
  return v;
}

__device__ float sum_partials(const float* partials, int64_t count) {
  float acc = 0.f;
  for (int64_t k = threadIdx.x; k < count; k += kThreads) acc += partials[k];
  return block_sum(acc);
}

template <typename scalar_t>
__device__ __forceinline__ void store_l2(scalar_t* out, int64_t i, float x, float delta, float factor,
                                         const StepParams& p, const Geometry& g) {
  int64_t b = 0, c = 0;
  if (g.needs_sample) b = i / g.sample_size;
  if (g.needs_channel) c = (i / g.channel_div) % g.channels;
  out[i] = static_cast<scalar_t>(l2_output(x, delta, factor, p.lower.at(b, c), p.upper.at(b, c)));
}

template <bool kStep, int kPerThread, typename scalar_t, typename grad_t>
__global__ void __launch_bounds__(kThreads) l2_sample_kernel(const scalar_t* x_adv, const grad_t* __restrict__ grad,
                                                             const scalar_t* __restrict__ x, scalar_t* out, int64_t n,
                                                             StepParams p, Geometry g, bool targeted) {
  const int64_t b = blockIdx.x;
  const int64_t base = b * n;
  float xa[kPerThread], gv[kPerThread], xv[kPerThread];
  float acc = 0.f;
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(k) * kThreads;
    const bool in = i < n;
    xa[k] = in ? static_cast<float>(x_adv[base + i]) : 0.f;
    xv[k] = in ? static_cast<float>(x[base + i]) : 0.f;
    gv[k] = (kStep && in) ? l2_grad_entry(static_cast<float>(grad[base + i])) : 0.f;
    acc += gv[k] * gv[k];
  }
  const float inverse_grad_norm = kStep ? l2_inverse_norm(sqrtf(block_sum(acc))) : 0.f;
  const float alpha = p.alpha.at(b, 0);
  acc = 0.f;
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const bool in = threadIdx.x + static_cast<int64_t>(k) * kThreads < n;
    const float d = kStep ? l2_step_delta(xa[k], gv[k], xv[k], inverse_grad_norm, alpha, targeted) : xa[k] - xv[k];
    xa[k] = in ? d : 0.f;  // xa now holds delta
    acc += xa[k] * xa[k];
  }
  const float factor = l2_rescale_factor(sqrtf(block_sum(acc)), p.eps.at(b, 0));
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(k) * kThreads;
    if (i < n) store_l2(out, base + i, xv[k], xa[k], factor, p, g);
  }
}

// kStage 0: partial sums of grad^2; 1: partial sums of delta^2; 2: write.
template <int kStage, bool kStep, typename scalar_t, typename grad_t>
__global__ void __launch_bounds__(kThreads) l2_chunk_kernel(const scalar_t* x_adv, const grad_t* __restrict__ grad,
                                                            const scalar_t* __restrict__ x, scalar_t* out,
                                                            float* grad_partials, float* delta_partials, int64_t n,
                                                            int64_t chunks, StepParams p, Geometry g, bool targeted) {
  const int64_t b = blockIdx.x / chunks;
  const int64_t begin = b * n + (blockIdx.x % chunks) * kL2Chunk;
  const int64_t end = min(begin + kL2Chunk, (b + 1) * n);
  if constexpr (kStage == 0) {
    float acc = 0.f;
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
      const float v = l2_grad_entry(static_cast<float>(grad[i]));
      acc += v * v;
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) grad_partials[blockIdx.x] = acc;
  } else {
    const float inverse_grad_norm =
        kStep ? l2_inverse_norm(sqrtf(sum_partials(grad_partials + b * chunks, chunks))) : 0.f;
    const float alpha = p.alpha.at(b, 0);
    auto delta_at = [&](int64_t i) {
      const float xa = static_cast<float>(x_adv[i]), xv = static_cast<float>(x[i]);
      return kStep ? l2_step_delta(xa, static_cast<float>(grad[i]), xv, inverse_grad_norm, alpha, targeted) : xa - xv;
    };
    if constexpr (kStage == 1) {
      float acc = 0.f;
      for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
        const float d = delta_at(i);
        acc += d * d;
      }
      acc = block_sum(acc);
      if (threadIdx.x == 0) delta_partials[blockIdx.x] = acc;
    } else {
      const float factor = l2_rescale_factor(sqrtf(sum_partials(delta_partials + b * chunks, chunks)), p.eps.at(b, 0));
      for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
        store_l2(out, i, static_cast<float>(x[i]), delta_at(i), factor, p, g);
      }
    }
  }
}

template <bool kStep, typename scalar_t, typename grad_t>
void launch_l2(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x, scalar_t* out, const StepLaunch& launch,
               bool targeted, const at::Tensor& like) {
  const int64_t n = launch.geometry.sample_size;
  const int64_t batch = launch.numel / n;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(like.get_device()).stream();
  const StepParams& p = launch.params;
  const Geometry& g = launch.geometry;
  if (n <= kThreads * 4) {
    l2_sample_kernel<kStep, 4><<<batch, kThreads, 0, stream>>>(x_adv, grad, x, out, n, p, g, targeted);
  } else if (n <= kL2Chunk) {
    l2_sample_kernel<kStep, kMaxPerThread><<<batch, kThreads, 0, stream>>>(x_adv, grad, x, out, n, p, g, targeted);
  } else {
    const int64_t chunks = (n + kL2Chunk - 1) / kL2Chunk;
    const at::Tensor partials = at::empty({2, batch * chunks}, like.options().dtype(c10::kFloat));
    float* grad_partials = partials.data_ptr<float>();
    float* delta_partials = grad_partials + batch * chunks;
    const int64_t blocks = batch * chunks;
    if (kStep) {
      l2_chunk_kernel<0, kStep><<<blocks, kThreads, 0, stream>>>(x_adv, grad, x, out, grad_partials, delta_partials,
                                                                 n, chunks, p, g, targeted);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    l2_chunk_kernel<1, kStep><<<blocks, kThreads, 0, stream>>>(x_adv, grad, x, out, grad_partials, delta_partials, n,
                                                               chunks, p, g, targeted);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    l2_chunk_kernel<2, kStep><<<blocks, kThreads, 0, stream>>>(x_adv, grad, x, out, grad_partials, delta_partials, n,
                                                               chunks, p, g, targeted);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// One entry point per op: checks, device guard, early return, dtype dispatch, launch.
template <bool kL2>
void step_out_cuda(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x,
                   const std::optional<at::Tensor>& eps, const std::optional<at::Tensor>& alpha,
                   const std::optional<at::Tensor>& lower, const std::optional<at::Tensor>& upper,
                   c10::ArrayRef<double> values, bool targeted, const at::Tensor& out) {
  const char* op = kL2 ? "fastadv::l2_step_out" : "fastadv::linf_step_out";
  const auto check = kL2 ? &check_l2_args : &check_step_args;
  const StepLaunch launch = check(op, x_adv, grad, x, eps, alpha, lower, upper, values, out, c10::kCUDA);
  const c10::cuda::CUDAGuard guard(x_adv.device());
  if (launch.numel == 0) return;
  dispatch_float_dtype(x_adv.scalar_type(), "x_adv", [&](auto scalar_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    dispatch_float_dtype(grad.scalar_type(), "grad", [&](auto grad_tag) {
      using grad_t = typename decltype(grad_tag)::type;
      const scalar_t* xa = x_adv.const_data_ptr<scalar_t>();
      const grad_t* gr = grad.const_data_ptr<grad_t>();
      const scalar_t* xx = x.const_data_ptr<scalar_t>();
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      if constexpr (kL2) {
        launch_l2<true>(xa, gr, xx, o, launch, targeted, x_adv);
      } else {
        launch_linf<true>(xa, gr, xx, o, launch, targeted, x_adv.get_device());
      }
    });
  });
}

template <bool kL2>
void project_out_cuda(const at::Tensor& x_adv, const at::Tensor& x, const std::optional<at::Tensor>& eps,
                      const std::optional<at::Tensor>& lower, const std::optional<at::Tensor>& upper,
                      c10::ArrayRef<double> values, const at::Tensor& out) {
  const char* op = kL2 ? "fastadv::l2_project_out" : "fastadv::linf_project_out";
  const auto check = kL2 ? &check_l2_args : &check_step_args;
  const StepLaunch launch =
      check(op, x_adv, std::nullopt, x, eps, std::nullopt, lower, upper, values, out, c10::kCUDA);
  const c10::cuda::CUDAGuard guard(x_adv.device());
  if (launch.numel == 0) return;
  dispatch_float_dtype(x_adv.scalar_type(), "x_adv", [&](auto scalar_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    const scalar_t* xa = x_adv.const_data_ptr<scalar_t>();
    const scalar_t* xx = x.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    if constexpr (kL2) {
      launch_l2<false, scalar_t, scalar_t>(xa, nullptr, xx, o, launch, false, x_adv);
    } else {
      launch_linf<false, scalar_t, scalar_t>(xa, nullptr, xx, o, launch, false, x_adv.get_device());
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastadv, CUDA, m) {
  m.impl("linf_step_out", &step_out_cuda<false>);
  m.impl("linf_project_out", &project_out_cuda<false>);
  m.impl("l2_step_out", &step_out_cuda<true>);
  m.impl("l2_project_out", &project_out_cuda<true>);
}

}  // namespace fastadv
