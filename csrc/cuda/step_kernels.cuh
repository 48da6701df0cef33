// The CUDA kernels of the fused steps: device code only (no torch headers), so that
// tests/cuda_emulation can compile them for the host and tests/cuda_emulation/test_ptx.py can compile them
// to PTX in seconds. The launchers are in step_cuda.cu.
//
// Work distribution (the emulation's block sampling and the PTX test rely on it):
// - L-inf: a grid-stride loop; thread t of the grid handles packs t, t + stride, ... (stride =
//   gridDim.x * blockDim.x), then the scalar tail elements t, t + stride, ... past the packs.
// - L2: block k handles work items k, k + gridDim.x, ... where an item is a sample (one-block
//   samples) or a (sample, chunk) pair (split samples, item = sample * chunks + chunk). The grid
//   is capped by the launcher, so any batch size fits in gridDim.x.
#pragma once

#include <cstdint>

#include "../step_math.h"

namespace fastadv {
namespace cuda_kernels {

constexpr int kThreads = 256;
constexpr int kBytesPerPack = 16;

// A 16-byte pack of elements: one vector load or store.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// y rounded to the output dtype without leaving the budget (step_math.h's within_budget).
template <typename scalar_t>
__device__ __forceinline__ scalar_t rounded_output(float y, float x, float limit) {
  const scalar_t r = static_cast<scalar_t>(y);
  return within_budget(r, static_cast<float>(r), y, x, limit);
}

// y rounded to the output dtype by L2's rule, toward x (step_math.h's toward_x).
template <typename scalar_t>
__device__ __forceinline__ scalar_t rounded_toward_x(float y, float x) {
  const scalar_t r = static_cast<scalar_t>(y);
  return toward_x(r, static_cast<float>(r), y, x);
}

template <bool kStep, typename scalar_t, typename grad_t, typename index_t>
__device__ __forceinline__ scalar_t linf_element(float x_adv, grad_t grad, float x, index_t i, const StepParams& p,
                                                 const Geometry& g, bool targeted) {
  index_t b = 0, c = 0;
  if (g.needs_sample) b = i / static_cast<index_t>(g.sample_size);
  if (g.needs_channel) c = (i / static_cast<index_t>(g.channel_div)) % static_cast<index_t>(g.channels);
  const float eps = p.eps.at(b, c), lower = p.lower.at(b, c), upper = p.upper.at(b, c);
  float y;
  if constexpr (kStep) {
    y = linf_step_value(x_adv, static_cast<float>(grad), x, eps, p.alpha.at(b, c), lower, upper, targeted);
  } else {
    y = linf_project_value(x_adv, x, eps, lower, upper);
  }
  return rounded_output<scalar_t>(y, x, eps);
}

// x_adv is not __restrict__: out may be x_adv (in place). Each element is read before it is
// written by the same thread, so aliasing is safe. index_t is int32_t when every index, plus one
// grid stride of overshoot, fits (integer division is the costly part of per-channel
// parameters), else int64_t.
template <bool kStep, int kVec, typename scalar_t, typename grad_t, typename index_t>
__global__ void linf_kernel(const scalar_t* x_adv, const grad_t* __restrict__ grad, const scalar_t* __restrict__ x,
                            scalar_t* out, index_t numel, StepParams p, Geometry g, bool targeted) {
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
      r.v[k] = linf_element<kStep, scalar_t>(static_cast<float>(a.v[k]), gk, static_cast<float>(xv.v[k]), v * kVec + k,
                                             p, g, targeted);
    }
    reinterpret_cast<Pack<scalar_t, kVec>*>(out)[v] = r;
  }
  for (index_t i = packs * kVec + first; i < numel; i += stride) {
    const grad_t gi = kStep ? grad[i] : grad_t(0);
    out[i] = linf_element<kStep, scalar_t>(static_cast<float>(x_adv[i]), gi, static_cast<float>(x[i]), i, p, g,
                                           targeted);
  }
}

// ---- L2 ----
// A sample of at most kThreads * kMaxPerThread elements is done by one block, held in registers
// between the two norms: 16 bytes per float32 element (grad, x_adv, x read once, out written
// once). Larger samples are split into chunks of kL2Chunk elements over three launches: partial
// sums of grad^2 (4 bytes/element), of delta^2 (12), then the write (16), 32 bytes per element.
// Every block sums its sample's partials in one fixed order, so results are deterministic (no
// atomics).
constexpr int kMaxPerThread = 16;
constexpr int64_t kL2Chunk = static_cast<int64_t>(kThreads) * kMaxPerThread;

// The sum of v over the block, returned to every thread (fixed reduction order). Every thread of
// the block must call it (it holds barriers), and blockDim.x must be kThreads.
__device__ __forceinline__ float block_sum(float v) {
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

__device__ __forceinline__ float sum_partials(const float* partials, int64_t count) {
  float acc = 0.f;
  for (int64_t k = threadIdx.x; k < count; k += kThreads) acc += partials[k];
  return block_sum(acc);
}

// Element i of sample b (the caller knows its sample: no division for it).
template <typename scalar_t>
__device__ __forceinline__ void store_l2(scalar_t* out, int64_t i, int64_t b, float x, float delta, float factor,
                                         const StepParams& p, const Geometry& g) {
  int64_t c = 0;
  if (g.needs_channel) c = (i / g.channel_div) % g.channels;
  if (!g.needs_sample) b = 0;
  out[i] = rounded_toward_x<scalar_t>(l2_output(x, delta, factor, p.lower.at(b, c), p.upper.at(b, c)), x);
}

// One block per sample of n elements (n <= kThreads * kPerThread), looping over the samples
// blockIdx.x, blockIdx.x + gridDim.x, ... The loop bounds are the same for every thread of the
// block, so all of them reach every barrier.
template <bool kStep, int kPerThread, typename scalar_t, typename grad_t>
__global__ void __launch_bounds__(kThreads)
    l2_sample_kernel(const scalar_t* x_adv, const grad_t* __restrict__ grad, const scalar_t* __restrict__ x,
                     scalar_t* out, int64_t n, int64_t batch, StepParams p, Geometry g, bool targeted) {
  for (int64_t b = blockIdx.x; b < batch; b += gridDim.x) {
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
    L2Direction dir{1.f, 0.f, 0.f};
    if constexpr (kStep) {
      const float sum_sq = block_sum(acc);
      float infinite_count = 0.f, scaled_sum_sq = 0.f;
      const float scale = l2_grad_scale(sum_sq);
      if (scale != 1.f) {  // the same for the whole block: every thread reaches the barriers
#pragma unroll
        for (int k = 0; k < kPerThread; ++k) {
          infinite_count += l2_infinite_count(gv[k]);
          scaled_sum_sq += l2_scaled_square(gv[k], scale);
        }
        infinite_count = block_sum(infinite_count);
        scaled_sum_sq = block_sum(scaled_sum_sq);
      }
      dir = l2_direction(sum_sq, infinite_count, scaled_sum_sq);
    }
    const float alpha = p.alpha.at(b, 0);
    acc = 0.f;
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
      const bool in = threadIdx.x + static_cast<int64_t>(k) * kThreads < n;
      const float d = kStep ? l2_step_delta(xa[k], gv[k], xv[k], dir, alpha, targeted) : xa[k] - xv[k];
      xa[k] = in ? d : 0.f;  // xa now holds delta
      acc += xa[k] * xa[k];
    }
    const float eps = p.eps.at(b, 0);
    float delta_sum_sq = block_sum(acc);
    const float delta_scale = l2_delta_scale(delta_sum_sq, eps);
    if (delta_scale != 1.f) {  // the same for the whole block
      acc = 0.f;
#pragma unroll
      for (int k = 0; k < kPerThread; ++k) {
        const float d = xa[k] * delta_scale;
        acc += d * d;
      }
      delta_sum_sq = block_sum(acc);
    }
    const float factor = l2_rescale_factor(sqrtf(delta_sum_sq), delta_scale, eps);
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
      const int64_t i = threadIdx.x + static_cast<int64_t>(k) * kThreads;
      if (i < n) store_l2(out, base + i, b, xv[k], xa[k], factor, p, g);
    }
  }
}

// Split samples: work item w = sample * chunks + chunk covers kL2Chunk elements of its sample.
// kStage 0: partial sums of grad^2 (with what l2_direction needs when the sample's sum leaves
// float32's range); 1: partial sums of delta^2 (the same for l2_delta_scale); 2: write.
// grad_partials holds four rows of `items` floats: sums of squares, counts of infinite entries,
// sums of squares scaled by kL2OverflowScale and by kL2UnderflowScale; delta_partials three: sums
// of squares, scaled down, scaled up. A scaled row is read only when the sample's total needs
// it, so a chunk fills it cheaply where it cannot be read: a sample whose total underflows has
// every chunk below the limit, and the down-scaled squares of a finite chunk sum to its sum times
// 2^-160 (exact, but where it underflows, which is negligible next to a total that overflowed).
// The two scaled partial sums of a chunk whose plain partial sum is acc, scaled_square(i, scale)
// giving an element's scaled square; each recomputed only where it can be read (see above).
// Every thread of the block must call it (block_sum), with the same acc and `up`.
template <typename F>
__device__ __forceinline__ void scaled_partials(float acc, bool up, int64_t begin, int64_t end, F scaled_square,
                                                float& down_sum, float& up_sum) {
  down_sum = (acc * kL2OverflowScale) * kL2OverflowScale;
  up_sum = (acc * kL2UnderflowScale) * kL2UnderflowScale;
  if (!(acc <= kFloatMax)) {
    float v = 0.f;
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) v += scaled_square(i, kL2OverflowScale);
    down_sum = block_sum(v);
  }
  if (up) {
    float v = 0.f;
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) v += scaled_square(i, kL2UnderflowScale);
    up_sum = block_sum(v);
  }
}

// A sample's sum of squares from its chunks' partials: the plain row's total, and, when that
// total needs a second reduction (scale != 1), the scaled row's instead. row points at the plain
// row of the sample's partials, the down- and up-scaled rows `down` and `up` rows further.
__device__ __forceinline__ float sample_sum(const float* row, int64_t chunks, int64_t items, int down, int up,
                                            float scale, float plain) {
  if (scale == 1.f) return plain;
  return sum_partials(row + (scale < 1.f ? down : up) * items, chunks);
}

template <int kStage, bool kStep, typename scalar_t, typename grad_t>
__global__ void __launch_bounds__(kThreads)
    l2_chunk_kernel(const scalar_t* x_adv, const grad_t* __restrict__ grad, const scalar_t* __restrict__ x,
                    scalar_t* out, float* grad_partials, float* delta_partials, int64_t n, int64_t chunks,
                    int64_t items, StepParams p, Geometry g, bool targeted) {
  for (int64_t w = blockIdx.x; w < items; w += gridDim.x) {
    const int64_t b = w / chunks;
    const int64_t begin = b * n + (w % chunks) * kL2Chunk;
    const int64_t end = min(begin + kL2Chunk, (b + 1) * n);
    const float eps = p.eps.at(b, 0);
    if constexpr (kStage == 0) {
      float acc = 0.f;
      for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
        const float v = l2_grad_entry(static_cast<float>(grad[i]));
        acc += v * v;
      }
      acc = block_sum(acc);
      float infinite_count = 0.f, down_sum, up_sum;
      if (!(acc <= kFloatMax)) {  // the same for the whole block
        float v = 0.f;
        for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) v += l2_infinite_count(static_cast<float>(grad[i]));
        infinite_count = block_sum(v);
      }
      scaled_partials(acc, acc < kL2UnderflowLimit, begin, end,
                      [&](int64_t i, float scale) { return l2_scaled_square(static_cast<float>(grad[i]), scale); },
                      down_sum, up_sum);
      if (threadIdx.x == 0) {
        grad_partials[w] = acc;
        grad_partials[items + w] = infinite_count;
        grad_partials[2 * items + w] = down_sum;
        grad_partials[3 * items + w] = up_sum;
      }
    } else {
      L2Direction dir{1.f, 0.f, 0.f};
      if constexpr (kStep) {
        const float* row = grad_partials + b * chunks;
        const float sum_sq = sum_partials(row, chunks);
        const float scale = l2_grad_scale(sum_sq);
        float infinite_count = 0.f;
        if (scale == kL2OverflowScale) infinite_count = sum_partials(row + items, chunks);  // whole block
        dir = l2_direction(sum_sq, infinite_count, sample_sum(row, chunks, items, 2, 3, scale, sum_sq));
      }
      const float alpha = p.alpha.at(b, 0);
      auto delta_at = [&](int64_t i) {
        const float xa = static_cast<float>(x_adv[i]), xv = static_cast<float>(x[i]);
        return kStep ? l2_step_delta(xa, static_cast<float>(grad[i]), xv, dir, alpha, targeted)
                     : xa - xv;
      };
      if constexpr (kStage == 1) {
        float acc = 0.f;
        for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
          const float d = delta_at(i);
          acc += d * d;
        }
        acc = block_sum(acc);
        float down_sum, up_sum;
        scaled_partials(acc, acc < kL2UnderflowLimit && eps < kL2UnderflowEps, begin, end,
                        [&](int64_t i, float scale) {
                          const float d = delta_at(i) * scale;
                          return d * d;
                        },
                        down_sum, up_sum);
        if (threadIdx.x == 0) {
          delta_partials[w] = acc;
          delta_partials[items + w] = down_sum;
          delta_partials[2 * items + w] = up_sum;
        }
      } else {
        const float* row = delta_partials + b * chunks;
        const float delta_sum_sq = sum_partials(row, chunks);
        const float delta_scale = l2_delta_scale(delta_sum_sq, eps);
        const float scaled = sample_sum(row, chunks, items, 1, 2, delta_scale, delta_sum_sq);
        const float factor = l2_rescale_factor(sqrtf(scaled), delta_scale, eps);
        for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
          store_l2(out, i, b, static_cast<float>(x[i]), delta_at(i), factor, p, g);
        }
      }
    }
  }
}

}  // namespace cuda_kernels
}  // namespace fastadv
