// Argument checks and geometry shared by the CPU and CUDA launchers (written once).
// The Python layer (fastadv/ops.py) gives users the friendly errors; these checks guard
// direct calls of torch.ops.fastadv.* so that a kernel never reads out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <optional>

#include "step_math.h"

namespace fastadv {

struct StepLaunch {
  int64_t numel;
  Geometry geometry;
  StepParams params;
};

// grad is absent for the projection ops; alpha likewise (values then holds eps, lower, upper).
StepLaunch check_step_args(const char* op, const at::Tensor& x_adv, const std::optional<at::Tensor>& grad,
                           const at::Tensor& x, const std::optional<at::Tensor>& eps,
                           const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& lower,
                           const std::optional<at::Tensor>& upper, c10::ArrayRef<double> values,
                           const at::Tensor& out, c10::DeviceType device_type);

// The L2 ops: the same checks, and eps / alpha must not vary over channels.
StepLaunch check_l2_args(const char* op, const at::Tensor& x_adv, const std::optional<at::Tensor>& grad,
                         const at::Tensor& x, const std::optional<at::Tensor>& eps,
                         const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& lower,
                         const std::optional<at::Tensor>& upper, c10::ArrayRef<double> values, const at::Tensor& out,
                         c10::DeviceType device_type);

}  // namespace fastadv
