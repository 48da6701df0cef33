// CUDA launchers and registration of the fused steps; the kernels are in step_kernels.cuh.
// Launcher order: checks -> device guard -> current stream -> early return on empty -> dtype
// dispatch -> launch -> launch check after every launch.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../dispatch.h"
#include "../step_args.h"
#include "step_kernels.cuh"

namespace fastadv {
namespace {

using namespace cuda_kernels;

bool aligned_to(const void* ptr, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(bytes) == 0;
}

int max_resident_blocks(int device) {
  static int cache[64] = {0};
  const bool cached = device >= 0 && device < 64;
  if (cached && cache[device] > 0) return cache[device];
  int sms = 0, threads_per_sm = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, device));
  const int blocks = std::max(1, sms * (threads_per_sm / kThreads));
  if (cached) cache[device] = blocks;
  return blocks;
}

// Blocks for `work` items of kThreads each (L-inf) or one item per block (L2): at most a few
// waves of resident blocks, which saturate memory; the kernels loop over the rest. This also
// keeps gridDim.x far below its limit (2^31 - 1) for any tensor.
int64_t capped_blocks(int64_t blocks_wanted, int device) {
  return std::max<int64_t>(1, std::min<int64_t>(blocks_wanted, 4LL * max_resident_blocks(device)));
}

template <bool kStep, typename scalar_t, typename grad_t>
void launch_linf(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x, scalar_t* out,
                 const StepLaunch& launch, bool targeted, int device, cudaStream_t stream) {
  constexpr int kVec = kBytesPerPack / sizeof(scalar_t);
  const bool vectorize = aligned_to(x_adv, kBytesPerPack) && aligned_to(x, kBytesPerPack) &&
                         aligned_to(out, kBytesPerPack) && (!kStep || aligned_to(grad, sizeof(grad_t) * kVec));
  const int64_t numel = launch.numel;
  const int64_t work = vectorize ? std::max<int64_t>(numel / kVec, numel % kVec) : numel;
  const int64_t blocks = capped_blocks((work + kThreads - 1) / kThreads, device);
  auto go = [&](auto index_tag) {
    using index_t = decltype(index_tag);
    if (vectorize) {
      linf_kernel<kStep, kVec, scalar_t, grad_t, index_t><<<blocks, kThreads, 0, stream>>>(
          x_adv, grad, x, out, static_cast<index_t>(numel), launch.params, launch.geometry, targeted);
    } else {
      linf_kernel<kStep, 1, scalar_t, grad_t, index_t><<<blocks, kThreads, 0, stream>>>(
          x_adv, grad, x, out, static_cast<index_t>(numel), launch.params, launch.geometry, targeted);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  // 32-bit indices while every index (plus one grid stride of overshoot) fits.
  const int64_t overshoot = blocks * kThreads;
  if (numel + overshoot < std::numeric_limits<int32_t>::max()) {
    go(int32_t{});
  } else {
    go(int64_t{});
  }
}

template <bool kStep, typename scalar_t, typename grad_t>
void launch_l2(const scalar_t* x_adv, const grad_t* grad, const scalar_t* x, scalar_t* out, const StepLaunch& launch,
               bool targeted, int device, cudaStream_t stream, const at::Tensor& like) {
  const int64_t n = launch.geometry.sample_size;
  const int64_t batch = launch.numel / n;
  const StepParams& p = launch.params;
  const Geometry& g = launch.geometry;
  if (n <= kL2Chunk) {
    const int64_t blocks = capped_blocks(batch, device);
    if (n <= kThreads * 4) {
      l2_sample_kernel<kStep, 4><<<blocks, kThreads, 0, stream>>>(x_adv, grad, x, out, n, batch, p, g, targeted);
    } else {
      l2_sample_kernel<kStep, kMaxPerThread>
          <<<blocks, kThreads, 0, stream>>>(x_adv, grad, x, out, n, batch, p, g, targeted);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const int64_t chunks = (n + kL2Chunk - 1) / kL2Chunk;
  const int64_t items = batch * chunks;
  // rows (l2_chunk_kernel): of grad, sums of squares, counts of infinite entries, sums of squares
  // scaled down and up; of delta, sums of squares, scaled down and up
  const at::Tensor partials = at::empty({7, items}, like.options().dtype(c10::kFloat));
  float* grad_partials = partials.data_ptr<float>();
  float* delta_partials = grad_partials + 4 * items;
  const int64_t blocks = capped_blocks(items, device);
  if constexpr (kStep) {
    l2_chunk_kernel<0, kStep><<<blocks, kThreads, 0, stream>>>(x_adv, grad, x, out, grad_partials, delta_partials, n,
                                                               chunks, items, p, g, targeted);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  l2_chunk_kernel<1, kStep><<<blocks, kThreads, 0, stream>>>(x_adv, grad, x, out, grad_partials, delta_partials, n,
                                                             chunks, items, p, g, targeted);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  l2_chunk_kernel<2, kStep><<<blocks, kThreads, 0, stream>>>(x_adv, grad, x, out, grad_partials, delta_partials, n,
                                                             chunks, items, p, g, targeted);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The pointers of one op call with its dtypes resolved, and where to launch.
template <bool kL2, bool kStep, typename scalar_t, typename grad_t>
void launch(const at::Tensor& x_adv, const grad_t* grad, const at::Tensor& x, const at::Tensor& out,
            const StepLaunch& step, bool targeted) {
  const int device = c10::cuda::current_device();  // the guard's
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  const scalar_t* xa = x_adv.const_data_ptr<scalar_t>();
  const scalar_t* xx = x.const_data_ptr<scalar_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  if constexpr (kL2) {
    launch_l2<kStep>(xa, grad, xx, o, step, targeted, device, stream, x_adv);
  } else {
    launch_linf<kStep>(xa, grad, xx, o, step, targeted, device, stream);
  }
}

// One entry point per op: checks, device guard, early return, dtype dispatch, launch.
template <bool kL2>
void step_out_cuda(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x,
                   const std::optional<at::Tensor>& eps, const std::optional<at::Tensor>& alpha,
                   const std::optional<at::Tensor>& lower, const std::optional<at::Tensor>& upper,
                   c10::ArrayRef<double> values, bool targeted, const at::Tensor& out) {
  const char* op = kL2 ? "fastadv::l2_step_out" : "fastadv::linf_step_out";
  const auto check = kL2 ? &check_l2_args : &check_step_args;
  const StepLaunch step = check(op, x_adv, grad, x, eps, alpha, lower, upper, values, out, c10::kCUDA);
  const c10::cuda::CUDAGuard guard(x_adv.device());
  if (step.numel == 0) return;
  dispatch_float_dtype(x_adv.scalar_type(), "x_adv", [&](auto scalar_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    dispatch_float_dtype(grad.scalar_type(), "grad", [&](auto grad_tag) {
      using grad_t = typename decltype(grad_tag)::type;
      launch<kL2, true, scalar_t>(x_adv, grad.const_data_ptr<grad_t>(), x, out, step, targeted);
    });
  });
}

template <bool kL2>
void project_out_cuda(const at::Tensor& x_adv, const at::Tensor& x, const std::optional<at::Tensor>& eps,
                      const std::optional<at::Tensor>& lower, const std::optional<at::Tensor>& upper,
                      c10::ArrayRef<double> values, const at::Tensor& out) {
  const char* op = kL2 ? "fastadv::l2_project_out" : "fastadv::linf_project_out";
  const auto check = kL2 ? &check_l2_args : &check_step_args;
  const StepLaunch step = check(op, x_adv, std::nullopt, x, eps, std::nullopt, lower, upper, values, out, c10::kCUDA);
  const c10::cuda::CUDAGuard guard(x_adv.device());
  if (step.numel == 0) return;
  dispatch_float_dtype(x_adv.scalar_type(), "x_adv", [&](auto scalar_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    launch<kL2, false, scalar_t>(x_adv, static_cast<const scalar_t*>(nullptr), x, out, step, false);
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
