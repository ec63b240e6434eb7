// One int8 linear layer prepared for fbgemm: the weight packed once, its per-channel scales and
// column sums, and the activation range its calls quantize to (per token).
#pragma once

#include <ATen/ATen.h>
#include <fbgemm/Fbgemm.h>

#include <memory>

#include "huge_pages.h"
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

  // Whether the packed weight lies in memory the OS was asked to back with 2 MiB pages.
  bool on_huge_pages() const { return packed_memory_ != nullptr; }

 private:
  bool symmetric_;
  int32_t qmax_;   // symmetric: q in [-qmax, qmax]
  int32_t steps_;  // asymmetric: u in [0, steps]
  HugePageMemory packed_memory_;  // declared first: outlives packed_
  std::unique_ptr<fbgemm::PackBMatrix<int8_t>> packed_;
  at::Tensor scales_;  // float32 [out]
  at::Tensor colsum_;  // int32 [out]: sum_k w[n, k]

  // The steps of a call, on rows [begin, end) of the call's buffers: u (quantized activations),
  // params (each row's scale and zero point) and y (int32 sums, then the floats in place).
  void quantize_rows(const float* x, int64_t begin, int64_t end, uint8_t* u,
                     RowParams* params) const;
  // acc[rows, out] = u[rows, in] W^T, as fbgemm task `task` of `tasks`
  void multiply(const uint8_t* u, int64_t rows, int32_t* acc, int task, int tasks) const;
  void finish_rows(int64_t begin, int64_t end, const RowParams* params, const float* bias,
                   float* y, Activation act) const;
};

// Whether this CPU runs fbgemm's GEMMs at all.
bool cpu_supported();

}  // namespace quantcore_native
