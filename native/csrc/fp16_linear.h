// One float16-weight linear layer on fbgemm's fp16 GEMM (float32 activations, float16 weights
// widened in registers, float32 sums), for CPUs without fast float16 arithmetic. fbgemm's fp16
// packing is reached through torch's own packed-parameter object (its headers need asmjit, which
// the torch wheel does not ship), called directly rather than through the dispatcher.
#pragma once

#include <ATen/ATen.h>
#include <ATen/native/quantized/PackedParams.h>

#include "native_linear.h"

namespace quantcore_native {

class Fp16Linear final : public NativeLinear {
 public:
  // weight: float16 [out, in]
  explicit Fp16Linear(const at::Tensor& weight);

  void run(const float* x, int64_t tokens, const float* bias, float* y,
           Activation act = Activation::kNone) const override;

  // The exact float16 weight back from the packed copy.
  at::Tensor unpack() const;

 private:
  c10::intrusive_ptr<LinearPackedParamsBase> packed_;
};

// Whether this torch build has fbgemm's fp16 packing (quantized::linear_prepack_fp16).
bool fp16_supported();

}  // namespace quantcore_native
