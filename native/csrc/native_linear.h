// What the recurrent loops need of a packed linear layer, whatever its weight format.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

#include "gate_math.h"

namespace quantcore_native {

class NativeLinear {
 public:
  virtual ~NativeLinear() = default;

  // y[tokens, out] = act(x[tokens, in] W^T (+ bias)): float32 rows, contiguous.
  virtual void run(const float* x, int64_t tokens, const float* bias, float* y,
                   Activation act = Activation::kNone) const = 0;

  // float32 [..., in] -> float32 [..., out] (any float input dtype is computed in float32)
  at::Tensor forward(const at::Tensor& x, const std::optional<at::Tensor>& bias,
                     Activation act = Activation::kNone) const;

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }

 protected:
  NativeLinear(int64_t out_features, int64_t in_features) : out_(out_features), in_(in_features) {}

  int64_t out_;
  int64_t in_;
};

}  // namespace quantcore_native
