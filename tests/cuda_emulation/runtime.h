// A CUDA runtime for the host: enough of CUDA for fastadv's kernels (csrc/cuda/) to compile with
// g++ and run on CPU tensors, with the checks a GPU would not make loudly.
//
// build.py force-includes this header before a rewritten copy of each csrc/cuda/ file; the
// rewrite only turns `kernel<<<grid, block, smem, stream>>>(args)` into
// `Launch(..., grid, block, smem, stream).run([=] { kernel(args); })` and a few tokens into the
// checked versions declared here.
//
// Execution model: blocks run one after another; the threads of a block are fibers. The
// scheduler resumes one runnable thread at a time, which runs until it reaches a barrier, a warp
// shuffle or its end: always the lowest-numbered runnable thread (forward order), the highest
// (reverse), or one at random. So warp 0 (forward) or the last warp (reverse) runs ahead of the
// others as far as the barriers let it, which is what exposes a missing barrier. Every check failure raises a c10::Error at
// the launch, naming the kernel, the launch site, the thread and the source line:
// - a __syncthreads() not reached by every thread of the block, or reached at different lines;
// - a warp shuffle not reached by every lane its mask names, a mask naming lanes that do not
//   exist (a partial warp) or lanes of the warp reaching different shuffles;
// - a grid or block beyond the hardware limits (gridDim.x <= 2^31 - 1, y and z <= 65535,
//   <= 1024 threads a block), checked on the launch's own integer before any narrowing;
// - a launch on another stream than the current one, without a device guard, or not followed
//   by an error check (cudaGetLastError, which C10_CUDA_KERNEL_LAUNCH_CHECK calls);
// - a reinterpret_cast to a pointer type whose alignment the address does not have (the 16- and
//   32-byte vector accesses);
// - an invalid memory access (SIGSEGV / SIGBUS inside a kernel, including a fiber's stack
//   overflow).
// Shared memory is filled with NaN bytes (0xFF) at the start of each block, and scratch tensors
// allocated with at::empty by the launchers are filled with them too, so a missed write shows.
//
// What it cannot see: memory ordering between blocks (they run one after another), GPU rounding
// of fused multiply-adds (the host compiles without contraction), and speed.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>

// ---- CUDA keywords ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The running thread's coordinates; the scheduler sets them before it resumes a fiber.
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;
constexpr int warpSize = 32;

// Device overloads of min / max, as CUDA's math headers declare them on the host too.
inline int min(int a, int b) { return a < b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }

// ---- the runtime API the launchers use ----
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidConfiguration = 9 };
enum cudaDeviceAttr { cudaDevAttrMaxThreadsPerBlock = 1, cudaDevAttrMultiProcessorCount = 16,
                      cudaDevAttrMaxThreadsPerMultiProcessor = 39 };  // fmt: skip
struct CUstream_st;
using cudaStream_t = CUstream_st*;

cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);

namespace fastadv_emu {

// ---- scheduler entry points for the device code ----
void syncthreads(const char* file, int line);
void syncwarp(const char* file, int line, unsigned mask = 0xffffffffu);
enum class ShuffleKind { kIndex, kUp, kDown, kXor };
uint64_t shuffle(ShuffleKind kind, unsigned mask, uint64_t bits, int operand, int width, const char* file, int line);
[[noreturn]] void device_error(const std::string& message);

template <typename T>
T shuffle_value(ShuffleKind kind, unsigned mask, T value, int operand, const char* file, int line, int width = 32) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>, "shuffle of a large type");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = shuffle(kind, mask, bits, operand, width, file, line);
  T result;
  std::memcpy(&result, &bits, sizeof(T));
  return result;
}

// A reinterpret_cast that checks the alignment a pointer's target type requires (vector loads
// and stores go through such casts).
void misaligned(const void* address, std::size_t alignment, const char* type_name);

template <typename To, typename From>
To checked_reinterpret_cast(From from) {
  if constexpr (std::is_pointer_v<To> && std::is_pointer_v<From>) {
    using Target = std::remove_cv_t<std::remove_pointer_t<To>>;
    if constexpr (!std::is_void_v<Target>) {
      if (reinterpret_cast<std::uintptr_t>(from) % alignof(Target) != 0) {
        misaligned(static_cast<const void*>(from), alignof(Target), typeid(Target).name());
      }
    }
  }
  return reinterpret_cast<To>(from);
}

// Shared memory: one array per declaration, filled with NaN bytes when a new block first uses it.
uint64_t block_generation();
template <typename T, std::size_t N, int kId>
T (&shared_array())[N] {
  static T storage[N];
  static uint64_t generation = 0;
  if (generation != block_generation()) {
    std::memset(static_cast<void*>(storage), 0xFF, sizeof(storage));
    generation = block_generation();
  }
  return storage;
}

// Scratch tensors of the launchers, filled with NaN bytes.
inline at::Tensor poisoned_empty(at::IntArrayRef size, at::TensorOptions options = {},
                                 std::optional<at::MemoryFormat> memory_format = std::nullopt) {
  at::Tensor t = at::empty(size, options, memory_format);
  if (t.numel() > 0) std::memset(t.data_ptr(), 0xFF, t.numel() * t.element_size());
  return t;
}

// ---- launches ----
struct LaunchSite {
  const char* kernel;
  const char* file;
  int line;
};

class Launch {
 public:
  template <typename Grid, typename Block>
  Launch(const char* kernel, const char* file, int line, Grid grid, Block block, std::size_t shared_bytes = 0,
         cudaStream_t stream = nullptr)
      : site_{kernel, file, line}, shared_bytes_(shared_bytes), stream_(stream) {
    grid_ = dims("grid", grid);
    block_ = dims("block", block);
  }

  // `body` calls the kernel with the launch's arguments, captured by value (build.py writes
  // `[=] { kernel(args); }`): every thread gets its own copy of the parameters, as on a GPU.
  template <typename Body>
  void run(Body body) {
    execute(std::function<void()>(std::move(body)));
  }

 private:
  struct Dims {
    int64_t x, y, z;
  };
  template <typename T>
  static Dims dims(const char*, T value) {
    if constexpr (std::is_same_v<std::decay_t<T>, dim3>) {
      return {value.x, value.y, value.z};
    } else {
      static_assert(std::is_integral_v<T>, "grid and block must be integers or dim3");
      // Kept as the launch's own (maybe 64-bit) integer: the check sees what a narrowing to
      // dim3's unsigned int would hide.
      return {static_cast<int64_t>(value), 1, 1};
    }
  }
  void execute(const std::function<void()>& body);

  LaunchSite site_;
  Dims grid_{}, block_{};
  std::size_t shared_bytes_;
  cudaStream_t stream_;
};

}  // namespace fastadv_emu

#define __syncthreads() ::fastadv_emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::fastadv_emu::syncwarp(__FILE__, __LINE__, ##__VA_ARGS__)
#define FASTADV_EMU_SHFL(kind, mask, value, operand, ...) \
  ::fastadv_emu::shuffle_value(kind, mask, value, operand, __FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_sync(mask, value, lane, ...) \
  FASTADV_EMU_SHFL(::fastadv_emu::ShuffleKind::kIndex, mask, value, lane, ##__VA_ARGS__)
#define __shfl_up_sync(mask, value, delta, ...) \
  FASTADV_EMU_SHFL(::fastadv_emu::ShuffleKind::kUp, mask, value, delta, ##__VA_ARGS__)
#define __shfl_down_sync(mask, value, delta, ...) \
  FASTADV_EMU_SHFL(::fastadv_emu::ShuffleKind::kDown, mask, value, delta, ##__VA_ARGS__)
#define __shfl_xor_sync(mask, value, lane_mask, ...) \
  FASTADV_EMU_SHFL(::fastadv_emu::ShuffleKind::kXor, mask, value, lane_mask, ##__VA_ARGS__)

// ---- c10/cuda: what the launchers use of CUDAException.h, CUDAFunctions.h, CUDAGuard.h and
// CUDAStream.h (the files of those names in include/ forward here) ----
namespace c10::cuda {

c10::DeviceIndex current_device();

class CUDAGuard {
 public:
  explicit CUDAGuard(c10::Device device);
  ~CUDAGuard();
  CUDAGuard(const CUDAGuard&) = delete;
  CUDAGuard& operator=(const CUDAGuard&) = delete;
};

class CUDAStream {
 public:
  explicit CUDAStream(cudaStream_t stream) : stream_(stream) {}
  cudaStream_t stream() const { return stream_; }
  operator cudaStream_t() const { return stream_; }

 private:
  cudaStream_t stream_;
};

CUDAStream getCurrentCUDAStream(c10::DeviceIndex device = -1);

}  // namespace c10::cuda

#define C10_CUDA_CHECK(EXPR)                                                                          \
  do {                                                                                                \
    const cudaError_t fastadv_emu_error = EXPR;                                                       \
    TORCH_CHECK(fastadv_emu_error == cudaSuccess, "CUDA error: ", cudaGetErrorString(fastadv_emu_error)); \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
