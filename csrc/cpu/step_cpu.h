// The CPU loops are compiled once per x86-64 ISA level (csrc/cpu/step_cpu_loops.h, included by
// step_cpu_baseline.cpp, step_cpu_avx2.cpp and step_cpu_avx512.cpp); step_cpu.cpp checks the
// arguments and calls the build chosen at run time (FASTADV_CPU_ISA, else the best the CPU runs).
#pragma once

#include <ATen/core/Tensor.h>

#include "../step_args.h"

// The wider builds exist where GCC or Clang target x86-64 (function target attributes, F16C and
// AVX-512 intrinsics); elsewhere there is the baseline build only.
#if defined(__x86_64__) && defined(__GNUC__)
#define FASTADV_CPU_X86_BUILDS 1
#else
#define FASTADV_CPU_X86_BUILDS 0
#endif

namespace fastadv {

// One build's entry points, on checked arguments of one native layout (grad is unused by the
// projections).
struct CpuLoops {
  void (*step)(bool l2, const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x, const at::Tensor& out,
               const StepLaunch& launch, bool targeted);
  void (*project)(bool l2, const at::Tensor& x_adv, const at::Tensor& x, const at::Tensor& out,
                  const StepLaunch& launch);
  bool (*l2_pipelined)();  // whether float32 L2 steps pipeline their passes across samples
};

// FASTADV_CPU_L2_PIPELINE: on (1) or off (0) forces how the float32 L2 step runs its passes (pipelined
// across samples, or sample by sample: step_cpu_loops.h's l2_pipelined); unset or auto (-1): each
// build measures both once. Any other value raises, naming the variable.
int cpu_l2_pipeline_setting();

const CpuLoops& cpu_loops_baseline();
#if FASTADV_CPU_X86_BUILDS
const CpuLoops& cpu_loops_avx2();    // AVX2 + FMA + F16C (x86-64-v3: Haswell, Zen and later)
const CpuLoops& cpu_loops_avx512();  // AVX-512 F/BW/VL/DQ (x86-64-v4: Skylake-SP, Zen 4 and later)
#endif

}  // namespace fastadv
