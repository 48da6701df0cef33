// All op schemas in one place. csrc/register.cpp defines them in the `fastadv` namespace; the
// CUDA emulation of the tests (tests/cuda_emulation) defines the same schemas in its own.
// Kernels are registered per device in cpu/ and cuda/; the fake (meta) implementations, which
// check shapes and dtypes, are in Python: fastadv/backends/step_ops.py (register_fake_kernels).
#pragma once

#include <torch/library.h>

namespace fastadv {

inline void define_step_ops(torch::Library& m) {
  // Parameters are either a float32 [Bp, Cp] tensor (per sample and/or channel) or, when the
  // tensor is None, the matching entry of `values`: (eps, alpha, lower, upper) for steps,
  // (eps, lower, upper) for projections.
  m.def(
      "linf_step_out(Tensor x_adv, Tensor grad, Tensor x, Tensor? eps, Tensor? alpha, Tensor? lower, "
      "Tensor? upper, float[] values, bool targeted, Tensor(a!) out) -> ()");
  m.def(
      "linf_project_out(Tensor x_adv, Tensor x, Tensor? eps, Tensor? lower, Tensor? upper, float[] values, "
      "Tensor(a!) out) -> ()");
  // L2: eps and alpha are per sample at most ([Bp, 1] tables).
  m.def(
      "l2_step_out(Tensor x_adv, Tensor grad, Tensor x, Tensor? eps, Tensor? alpha, Tensor? lower, "
      "Tensor? upper, float[] values, bool targeted, Tensor(a!) out) -> ()");
  m.def(
      "l2_project_out(Tensor x_adv, Tensor x, Tensor? eps, Tensor? lower, Tensor? upper, float[] values, "
      "Tensor(a!) out) -> ()");
}

// The CPU loop's builds per x86-64 ISA (csrc/cpu/step_cpu.h): the one in use ("baseline", "avx2"
// or "avx512"), those this CPU runs, and a switch (the environment variable FASTADV_CPU_ISA
// chooses at the first call otherwise). cpu_l2_pipelined: whether the build in use runs float32
// L2 steps pipelined across samples (FASTADV_CPU_L2_PIPELINE, else measured at the first call).
inline void define_cpu_isa_ops(torch::Library& m) {
  m.def("cpu_isa() -> str");
  m.def("cpu_isas() -> str[]");
  m.def("set_cpu_isa(str name) -> ()");
  m.def("cpu_l2_pipelined() -> bool");
}

}  // namespace fastadv
