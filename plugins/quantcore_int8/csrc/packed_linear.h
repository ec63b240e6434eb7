// One int8 linear layer prepared for fbgemm: the weight packed once, its per-channel scales and
// column sums, and the activation range its calls quantize to.
#pragma once

#include <ATen/ATen.h>
#include <fbgemm/Fbgemm.h>

#include <memory>

namespace quantcore_int8 {

class PackedLinear {
 public:
  // weight: int8 [out, in]; scales: float32 [out]; bits: activation width (2-8); symmetric:
  // per-token symmetric or asymmetric activations.
  PackedLinear(const at::Tensor& weight, const at::Tensor& scales, int64_t bits, bool symmetric);

  // x: float32 [tokens, in] (contiguous) -> float32 [tokens, out]
  at::Tensor forward(const at::Tensor& x, const std::optional<at::Tensor>& bias) const;

  // y[tokens, out] = linear of x[tokens, in] (raw pointers, for the recurrent loops).
  void run(const float* x, int64_t tokens, const float* bias, float* y) const;

  // The exact int8 weight back from the packed copy.
  at::Tensor unpack() const;

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }

 private:
  int64_t out_;
  int64_t in_;
  bool symmetric_;
  int32_t qmax_;   // symmetric: q in [-qmax, qmax]
  int32_t steps_;  // asymmetric: u in [0, steps]
  std::unique_ptr<fbgemm::PackBMatrix<int8_t>> packed_;
  at::Tensor scales_;  // float32 [out]
  at::Tensor colsum_;  // int32 [out]: sum_k w[n, k]
};

// Whether this CPU runs fbgemm's int8 GEMM at all.
bool cpu_supported();

}  // namespace quantcore_int8
