// Kernels with deliberate bugs, and one correct one, to show that each check of the emulation
// (runtime.h) fires. Built with the emulation through the same rewrite as csrc/cuda/; the op
// fastadv_cuda_emulation_selftest::run(case, out) launches the case's kernel as a real
// launcher would (guard, current stream, launch check), unless the case is about one of those.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <string>

namespace {

struct alignas(16) Float4 {
  float v[4];
};

__device__ float warp_total(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Correct: the sum of threadIdx.x over the block through shared memory, written by thread 0;
// and the order in which threads first ran (out[2 + k] = the k-th thread to start).
__global__ void block_sum_and_order(float* out) {
  __shared__ float partial[8];
  const int started = static_cast<int>(out[1]);
  out[1] = started + 1;
  out[2 + started] = threadIdx.x;
  const float v = warp_total(static_cast<float>(threadIdx.x));
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.f;
    for (int w = 0; w < 8; ++w) total += partial[w];
    out[0] = total;
  }
}

__global__ void barrier_in_branch(float* out) {
  if (threadIdx.x < 128) __syncthreads();
  out[threadIdx.x] = 1.f;
}

__global__ void barriers_at_two_lines(float* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

__global__ void shuffle_in_branch(float* out) {
  float v = threadIdx.x;
  if (threadIdx.x % 2 == 0) v = __shfl_down_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

__global__ void shuffle_on_partial_warp(float* out) {
  out[threadIdx.x] = warp_total(1.f);
}

__global__ void misaligned_vector_load(float* out) {
  const Float4 pack = reinterpret_cast<const Float4*>(out + 1)[0];
  out[0] = pack.v[0];
}

__global__ void write_far_away(float* out) {
  out[threadIdx.x - (int64_t{1} << 40)] = 1.f;
}

__global__ void read_unwritten_shared(float* out) {
  __shared__ float scratch[4];
  if (threadIdx.x == 0) out[0] = scratch[3];
}

__global__ void nothing(float*) {}

void run(const std::string& name, const at::Tensor& out) {
  float* data = out.data_ptr<float>();
  if (name == "no_guard") {
    nothing<<<1, 32, 0, c10::cuda::getCurrentCUDAStream()>>>(data);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const c10::cuda::CUDAGuard guard(out.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  if (name == "block_sum") {
    block_sum_and_order<<<1, 256, 0, stream>>>(data);
  } else if (name == "barrier_in_branch") {
    barrier_in_branch<<<1, 256, 0, stream>>>(data);
  } else if (name == "barriers_at_two_lines") {
    barriers_at_two_lines<<<1, 256, 0, stream>>>(data);
  } else if (name == "shuffle_in_branch") {
    shuffle_in_branch<<<1, 64, 0, stream>>>(data);
  } else if (name == "shuffle_on_partial_warp") {
    shuffle_on_partial_warp<<<1, 48, 0, stream>>>(data);
  } else if (name == "misaligned_vector_load") {
    misaligned_vector_load<<<1, 1, 0, stream>>>(data);
  } else if (name == "write_far_away") {
    write_far_away<<<1, 32, 0, stream>>>(data);
  } else if (name == "read_unwritten_shared") {
    read_unwritten_shared<<<1, 32, 0, stream>>>(data);
  } else if (name == "grid_over_2_31") {
    nothing<<<int64_t{1} << 31, 256, 0, stream>>>(data);
  } else if (name == "grid_over_2_32") {
    nothing<<<(int64_t{1} << 32) + 5, 256, 0, stream>>>(data);
  } else if (name == "grid_y_over_65535") {
    nothing<<<dim3(1, 65536), 256, 0, stream>>>(data);
  } else if (name == "block_over_1024") {
    nothing<<<1, 1025, 0, stream>>>(data);
  } else if (name == "default_stream") {
    nothing<<<1, 32>>>(data);
  } else if (name == "unchecked_launch") {
    nothing<<<1, 32, 0, stream>>>(data);
    nothing<<<1, 32, 0, stream>>>(data);
  } else if (name == "unchecked_last_launch") {
    nothing<<<1, 32, 0, stream>>>(data);
    return;
  } else {
    TORCH_CHECK(false, "unknown self-test case ", name);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY(fastadv_cuda_emulation_selftest, m) {
  m.def("run(str name, Tensor(a!) out) -> ()", &run);
}
