#include "fp16_linear.h"

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <algorithm>

namespace quantcore_native {
namespace {

// The fp16 packing op belongs to torch's deprecated quantized namespace: whatever it warns is
// torch's business, never the user's.
class SilentWarnings final : public c10::WarningHandler {
 public:
  void process(const c10::Warning&) override {}
};

c10::intrusive_ptr<LinearPackedParamsBase> prepack(const at::Tensor& weight) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("quantized::linear_prepack_fp16", "")
          .typed<c10::intrusive_ptr<LinearPackedParamsBase>(at::Tensor, std::optional<at::Tensor>)>();
  SilentWarnings silent;
  c10::WarningUtils::WarningHandlerGuard guard(&silent);
  return op.call(weight, std::nullopt);
}

}  // namespace

bool fp16_supported() {
  return c10::Dispatcher::singleton().findSchema({"quantized::linear_prepack_fp16", ""}).has_value();
}

Fp16Linear::Fp16Linear(const at::Tensor& weight) : NativeLinear(weight.size(0), weight.size(1)) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kHalf && weight.device().is_cpu(),
              "quantcore_native: the weight must be a 2-D float16 CPU tensor");
  // widening float16 to float32 is exact, and packing narrows the same values back
  packed_ = prepack(weight.to(at::kFloat).contiguous());
}

void Fp16Linear::run(const float* x, int64_t tokens, const float* bias, float* y,
                     Activation act) const {
  if (tokens == 0) return;
  const auto options = at::TensorOptions().dtype(at::kFloat);
  at::Tensor input = at::from_blob(const_cast<float*>(x), {tokens, in_}, options);
  at::Tensor output = at::from_blob(y, {tokens, out_}, options);
  packed_->apply_dynamic_out(input, output, false);
  if (bias == nullptr && act == Activation::kNone) return;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(out_, 1));
  at::parallel_for(0, tokens, grain, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      float* row = y + m * out_;
      if (bias != nullptr) {
        for (int64_t n = 0; n < out_; ++n) row[n] += bias[n];
      }
      activation_inplace(act, row, out_);
    }
  });
}

at::Tensor Fp16Linear::unpack() const {
  return std::get<0>(packed_->unpack()).to(at::kHalf);
}

}  // namespace quantcore_native
