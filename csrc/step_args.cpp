#include "step_args.h"

#include <c10/util/Exception.h>

namespace fastadv {
namespace {

bool is_supported_float(c10::ScalarType t) {
  return t == c10::kFloat || t == c10::kHalf || t == c10::kBFloat16;
}

// Memory order of a dense tensor: 0 = contiguous, 1 = channels_last(_3d), -1 = neither.
// A tensor that is both (e.g. C == 1) has one memory order, so contiguous wins.
int memory_order(const at::Tensor& t) {
  if (t.is_contiguous()) return 0;
  if (t.dim() == 4 && t.is_contiguous(c10::MemoryFormat::ChannelsLast)) return 1;
  if (t.dim() == 5 && t.is_contiguous(c10::MemoryFormat::ChannelsLast3d)) return 1;
  return -1;
}

StepParam make_param(const char* op, const char* name, const std::optional<at::Tensor>& table, double value,
                     int64_t batch, int64_t channels, const at::Tensor& like) {
  if (!table.has_value()) {
    return StepParam{nullptr, 0, 0, static_cast<float>(value)};
  }
  const at::Tensor& t = *table;
  TORCH_CHECK(t.scalar_type() == c10::kFloat && t.dim() == 2 && t.is_contiguous(), op, ": ", name,
              " must be a contiguous float32 tensor of shape [Bp, Cp]");
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(), " but x_adv is on ",
              like.device());
  const int64_t rows = t.size(0), cols = t.size(1);
  TORCH_CHECK((rows == 1 || rows == batch) && (cols == 1 || cols == channels), op, ": ", name,
              " has shape [", rows, ", ", cols, "]; expected [1 or ", batch, ", 1 or ", channels, "]");
  return StepParam{t.data_ptr<float>(), rows == 1 ? 0 : cols, cols == 1 ? 0 : 1, 0.f};
}

}  // namespace

StepLaunch check_step_args(const char* op, const at::Tensor& x_adv, const std::optional<at::Tensor>& grad,
                           const at::Tensor& x, const std::optional<at::Tensor>& eps,
                           const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& lower,
                           const std::optional<at::Tensor>& upper, c10::ArrayRef<double> values,
                           const at::Tensor& out, c10::DeviceType device_type) {
  TORCH_CHECK(x_adv.dim() >= 1, op, ": x_adv must have at least one dimension (dim 0 is the batch)");
  TORCH_CHECK(x_adv.device().type() == device_type, op, ": expected tensors on ", device_type, ", got ",
              x_adv.device());
  TORCH_CHECK(is_supported_float(x_adv.scalar_type()), op, ": x_adv must be float32, float16 or bfloat16");
  TORCH_CHECK(x.scalar_type() == x_adv.scalar_type() && out.scalar_type() == x_adv.scalar_type(), op,
              ": x and out must have x_adv's dtype");
  const int order = memory_order(x_adv);
  TORCH_CHECK(order >= 0, op, ": x_adv must be contiguous or channels_last");
  std::vector<const at::Tensor*> others{&x, &out};
  if (grad.has_value()) {
    TORCH_CHECK(is_supported_float(grad->scalar_type()), op, ": grad must be float32, float16 or bfloat16");
    others.push_back(&*grad);
  }
  for (const at::Tensor* t : others) {
    TORCH_CHECK(t->sizes() == x_adv.sizes(), op, ": all tensors must have x_adv's shape ", x_adv.sizes());
    TORCH_CHECK(t->device() == x_adv.device(), op, ": all tensors must be on x_adv's device");
    TORCH_CHECK(memory_order(*t) == order, op,
                ": all tensors must share x_adv's memory layout");
  }
  const bool has_alpha = grad.has_value();
  TORCH_CHECK(values.size() == (has_alpha ? 4u : 3u), op, ": values must hold one number per parameter");

  StepLaunch launch{};
  launch.numel = x_adv.numel();
  const int64_t batch = x_adv.size(0);
  const int64_t channels = x_adv.dim() >= 2 ? x_adv.size(1) : 1;
  size_t k = 0;
  StepParams& p = launch.params;
  p.eps = make_param(op, "eps", eps, values[k++], batch, channels, x_adv);
  p.alpha = has_alpha ? make_param(op, "alpha", alpha, values[k++], batch, channels, x_adv)
                      : StepParam{nullptr, 0, 0, 0.f};
  p.lower = make_param(op, "lower", lower, values[k++], batch, channels, x_adv);
  p.upper = make_param(op, "upper", upper, values[k++], batch, channels, x_adv);

  Geometry& g = launch.geometry;
  g.channels = channels;
  g.sample_size = batch > 0 ? launch.numel / batch : 1;
  const int64_t spatial = channels > 0 ? g.sample_size / channels : 1;
  g.channel_div = order == 0 ? spatial : 1;
  g.needs_sample = false;
  g.needs_channel = false;
  for (const StepParam* q : {&p.eps, &p.alpha, &p.lower, &p.upper}) {
    g.needs_sample |= q->stride_b != 0;
    g.needs_channel |= q->stride_c != 0;
  }
  return launch;
}

StepLaunch check_l2_args(const char* op, const at::Tensor& x_adv, const std::optional<at::Tensor>& grad,
                         const at::Tensor& x, const std::optional<at::Tensor>& eps,
                         const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& lower,
                         const std::optional<at::Tensor>& upper, c10::ArrayRef<double> values, const at::Tensor& out,
                         c10::DeviceType device_type) {
  StepLaunch launch = check_step_args(op, x_adv, grad, x, eps, alpha, lower, upper, values, out, device_type);
  TORCH_CHECK(launch.params.eps.stride_c == 0 && launch.params.alpha.stride_c == 0, op,
              ": eps and alpha are per sample at most for L2 (tables of shape [Bp, 1])");
  return launch;
}

}  // namespace fastadv
