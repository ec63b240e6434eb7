// One int8 linear layer prepared for fbgemm: the weight packed once, its per-channel scales and
// column sums, and the activation range its calls quantize to (per token).
#pragma once

#include <ATen/ATen.h>
#include <fbgemm/Fbgemm.h>

#include <memory>

#include "native_linear.h"
#include "quantize_rows.h"

namespace quantcore_native {

class Int8Linear final : public NativeLinear {
 public:
  // weight: int8 [out, in]; scales: float32 [out]; bits: activation width (2-8); symmetric:
  // per-token symmetric or asymmetric activations.
  Int8Linear(const at::Tensor& weight, const at::Tensor& scales, int64_t bits, bool symmetric);

  void run(const float* x, int64_t tokens, const float* bias, float* y,
           Activation act = Activation::kNone) const override;

  // The exact int8 weight back from the packed copy.
  at::Tensor unpack() const;

 private:
  bool symmetric_;
  int32_t qmax_;   // symmetric: q in [-qmax, qmax]
  int32_t steps_;  // asymmetric: u in [0, steps]
  std::unique_ptr<fbgemm::PackBMatrix<int8_t>> packed_;
  at::Tensor scales_;  // float32 [out]
  at::Tensor colsum_;  // int32 [out]: sum_k w[n, k]

  struct Rows;
  Rows quantize(const float* x, int64_t tokens) const;
  // Rows [begin, end) start to finish on the calling thread: quantized into u and params (the
  // whole call's buffers), multiplied, rescaled and activated in y.
  void run_rows(const float* x, int64_t begin, int64_t end, const float* bias, float* y,
                Activation act, uint8_t* u, RowParams* params) const;
};

// Whether this CPU runs fbgemm's GEMMs at all.
bool cpu_supported();

}  // namespace quantcore_native
