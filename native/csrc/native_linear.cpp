#include "native_linear.h"

#include <c10/util/Exception.h>

#include <vector>

namespace quantcore_native {

at::Tensor NativeLinear::forward(const at::Tensor& x, const std::optional<at::Tensor>& bias,
                                 Activation act) const {
  TORCH_CHECK(x.device().is_cpu(), "quantcore_native: the input must be on the CPU");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == in_, "input has ", x.dim() ? x.size(-1) : 0,
              " features, the layer expects ", in_);
  const at::Tensor x2 = x.reshape({-1, in_}).to(at::kFloat).contiguous();
  const float* bias_ptr = nullptr;
  at::Tensor bias32;
  if (bias.has_value() && bias->defined()) {
    bias32 = bias->to(at::kFloat).contiguous();
    TORCH_CHECK(bias32.numel() == out_, "quantcore_native: bias must have ", out_, " values");
    bias_ptr = bias32.data_ptr<float>();
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out_;
  at::Tensor y = at::empty(shape, x.options().dtype(at::kFloat));
  run(x2.data_ptr<float>(), x2.size(0), bias_ptr, y.data_ptr<float>(), act);
  return y;
}

}  // namespace quantcore_native
