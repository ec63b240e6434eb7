// The int8 linear in one native call: per-token quantization of the activations, fbgemm's
// u8 x s8 GEMM with int32 accumulation, and the rescale/zero-point/bias epilogue written over the
// int32 results in place (the output tensor is the GEMM's accumulator, so no extra buffer).
#include "packed_linear.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <vector>

#include "quantize_rows.h"

namespace quantcore_int8 {
namespace {

// Rows quantized or rescaled per parallel task: enough work to pay for a task.
int64_t row_grain(int64_t width) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1)); }

}  // namespace

bool cpu_supported() { return fbgemm::fbgemmSupportedCPU(); }

PackedLinear::PackedLinear(const at::Tensor& weight, const at::Tensor& scales, int64_t bits,
                           bool symmetric)
    : out_(weight.size(0)), in_(weight.size(1)), symmetric_(symmetric) {
  TORCH_CHECK(cpu_supported(), "quantcore_int8: fbgemm does not support this CPU");
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kChar && weight.device().is_cpu(),
              "quantcore_int8: the weight must be a 2-D int8 CPU tensor");
  TORCH_CHECK(scales.dim() == 1 && scales.size(0) == out_ && scales.scalar_type() == at::kFloat,
              "quantcore_int8: the scales must be float32, one per output channel");
  TORCH_CHECK(bits >= 2 && bits <= 8, "quantcore_int8: activations take 2 to 8 bits, not ", bits);
  const int32_t half = 1 << (bits - 1);
  qmax_ = half - 1;
  steps_ = 2 * half - 1;  // asymmetric range [-half, half - 1]
  const at::Tensor w = weight.contiguous();
  packed_ = std::make_unique<fbgemm::PackBMatrix<int8_t>>(
      fbgemm::matrix_op_t::Transpose, in_, out_, w.data_ptr<int8_t>(), in_, nullptr, 1);
  scales_ = scales.contiguous().clone();
  colsum_ = w.sum({1}, false, at::kInt).contiguous();
}

void PackedLinear::run(const float* x, int64_t tokens, const float* bias, float* y) const {
  if (tokens == 0) return;
  std::vector<uint8_t> u(static_cast<size_t>(tokens * in_));
  std::vector<RowParams> rows(static_cast<size_t>(tokens));
  at::parallel_for(0, tokens, row_grain(in_), [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      rows[m] = symmetric_ ? quantize_row_symmetric(x + m * in_, in_, qmax_, u.data() + m * in_)
                           : quantize_row_asymmetric(x + m * in_, in_, steps_, u.data() + m * in_);
    }
  });
  // fbgemm writes int32 sums into y's memory; the epilogue turns them into floats in place.
  auto* acc = reinterpret_cast<int32_t*>(y);
  const int threads = at::get_num_threads();
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      fbgemm::PackAMatrix<uint8_t> packed_a(fbgemm::matrix_op_t::NoTranspose, tokens, in_,
                                            u.data(), in_, nullptr, 1);
      fbgemm::DoNothing<int32_t, int32_t> done;
      fbgemm::memCopy<> copy(done);
      fbgemm::fbgemmPacked(packed_a, *packed_, acc, acc, out_, copy, task, threads);
    }
  });
  const float* wscale = scales_.data_ptr<float>();
  const int32_t* colsum = colsum_.data_ptr<int32_t>();
  at::parallel_for(0, tokens, row_grain(out_), [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      dequantize_row(acc + m * out_, out_, rows[m], colsum, wscale, bias, y + m * out_);
    }
  });
}

at::Tensor PackedLinear::forward(const at::Tensor& x, const std::optional<at::Tensor>& bias) const {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat,
              "quantcore_int8.linear: the input must be float32 on the CPU");
  TORCH_CHECK(x.size(-1) == in_, "quantcore_int8.linear: input has ", x.size(-1),
              " features, the layer expects ", in_);
  const at::Tensor x2 = x.reshape({-1, in_}).contiguous();
  const float* bias_ptr = nullptr;
  at::Tensor bias32;
  if (bias.has_value() && bias->defined()) {
    bias32 = bias->to(at::kFloat).contiguous();
    TORCH_CHECK(bias32.numel() == out_, "quantcore_int8.linear: bias must have ", out_, " values");
    bias_ptr = bias32.data_ptr<float>();
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out_;
  at::Tensor y = at::empty(shape, x.options());
  run(x2.data_ptr<float>(), x2.size(0), bias_ptr, y.data_ptr<float>());
  return y;
}

at::Tensor PackedLinear::unpack() const {
  at::Tensor w = at::empty({out_, in_}, at::dtype(at::kChar));
  packed_->unpack(w.data_ptr<int8_t>());
  return w;
}

}  // namespace quantcore_int8
