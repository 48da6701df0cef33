// The CPU ops: argument checks, then the loop of the build in use. The loops are compiled for
// several x86-64 ISA levels (step_cpu.h); the build is chosen once, at the first call, from the
// environment variable FASTADV_CPU_ISA (baseline, avx2, avx512; unset or auto: the best this CPU
// runs), and the ops fastadv::cpu_isa, cpu_isas and set_cpu_isa name and switch it;
// fastadv::cpu_l2_pipelined says how the build in use runs float32 L2 steps (FASTADV_CPU_L2_PIPELINE).
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "../step_args.h"
#include "step_cpu.h"

namespace fastadv {
namespace {

enum CpuIsa : int { kBaseline, kAvx2, kAvx512, kIsaCount };
constexpr const char* kIsaNames[kIsaCount] = {"baseline", "avx2", "avx512"};

bool host_runs(int isa) {
#if FASTADV_CPU_X86_BUILDS
  __builtin_cpu_init();
  const bool avx2 =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (isa == kAvx2) return avx2;
  if (isa == kAvx512) {
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
#endif
  return isa == kBaseline;
}

std::vector<std::string> host_isas() {
  std::vector<std::string> names;
  for (int isa = 0; isa < kIsaCount; ++isa) {
    if (host_runs(isa)) names.emplace_back(kIsaNames[isa]);
  }
  return names;
}

int best_isa() {
  int best = kBaseline;
  for (int isa = 0; isa < kIsaCount; ++isa) {
    if (host_runs(isa)) best = isa;
  }
  return best;
}

// `what` names where the name came from (the environment variable or the op's argument).
int isa_from_name(std::string_view name, const char* what) {
  if (name.empty() || name == "auto") return best_isa();
  std::string runs;
  for (const std::string& isa : host_isas()) runs += (runs.empty() ? "" : ", ") + isa;
  for (int isa = 0; isa < kIsaCount; ++isa) {
    if (name != kIsaNames[isa]) continue;
    TORCH_CHECK(host_runs(isa), what, "='", name, "': this CPU cannot run the ", name, " build of the CPU loop (it runs ",
                runs, ")");
    return isa;
  }
  TORCH_CHECK(false, what, " must be one of baseline, avx2, avx512 or auto, got '", name, "' (this CPU runs ", runs,
              ")");
}

std::atomic<int> chosen_isa{-1};  // -1: not chosen yet

int current_isa() {
  int isa = chosen_isa.load(std::memory_order_relaxed);
  if (isa < 0) {
    // A bad FASTADV_CPU_ISA fails every call with the same message until it is fixed or set_cpu_isa runs.
    const char* env = std::getenv("FASTADV_CPU_ISA");
    isa = isa_from_name(env ? env : "", "FASTADV_CPU_ISA");
    chosen_isa.store(isa, std::memory_order_relaxed);
  }
  return isa;
}

const CpuLoops& loops() {
  switch (current_isa()) {
#if FASTADV_CPU_X86_BUILDS
    case kAvx512:
      return cpu_loops_avx512();
    case kAvx2:
      return cpu_loops_avx2();
#endif
    default:
      return cpu_loops_baseline();
  }
}

// One entry point per op: checks, then the build's loop (dtype dispatch and kernel).
template <bool kL2>
void step_out_cpu(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x,
                  const std::optional<at::Tensor>& eps, const std::optional<at::Tensor>& alpha,
                  const std::optional<at::Tensor>& lower, const std::optional<at::Tensor>& upper,
                  c10::ArrayRef<double> values, bool targeted, const at::Tensor& out) {
  const char* op = kL2 ? "fastadv::l2_step_out" : "fastadv::linf_step_out";
  const StepLaunch launch = kL2 ? check_l2_args(op, x_adv, grad, x, eps, alpha, lower, upper, values, out, c10::kCPU)
                                : check_step_args(op, x_adv, grad, x, eps, alpha, lower, upper, values, out, c10::kCPU);
  if (launch.numel == 0) return;
  loops().step(kL2, x_adv, grad, x, out, launch, targeted);
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
  loops().project(kL2, x_adv, x, out, launch);
}

std::string cpu_isa() {
  return kIsaNames[current_isa()];
}

std::vector<std::string> cpu_isas() {
  return host_isas();
}

void set_cpu_isa(std::string_view name) {
  chosen_isa.store(isa_from_name(name, "fastadv::set_cpu_isa: name"), std::memory_order_relaxed);
}

bool cpu_l2_pipelined() {
  return loops().l2_pipelined();
}

}  // namespace

int cpu_l2_pipeline_setting() {
  const char* env = std::getenv("FASTADV_CPU_L2_PIPELINE");
  const std::string_view value = env ? env : "";
  if (value.empty() || value == "auto") return -1;
  if (value == "on") return 1;
  if (value == "off") return 0;
  TORCH_CHECK(false, "FASTADV_CPU_L2_PIPELINE must be on, off or auto, got '", value, "'");
}

TORCH_LIBRARY_IMPL(fastadv, CPU, m) {
  m.impl("linf_step_out", &step_out_cpu<false>);
  m.impl("linf_project_out", &project_out_cpu<false>);
  m.impl("l2_step_out", &step_out_cpu<true>);
  m.impl("l2_project_out", &project_out_cpu<true>);
}

// No tensor arguments, so no device to dispatch on: the kernels serve every dispatch key.
TORCH_LIBRARY_IMPL(fastadv, CompositeExplicitAutograd, m) {
  m.impl("cpu_isa", &cpu_isa);
  m.impl("cpu_isas", &cpu_isas);
  m.impl("set_cpu_isa", &set_cpu_isa);
  m.impl("cpu_l2_pipelined", &cpu_l2_pipelined);
}

}  // namespace fastadv
