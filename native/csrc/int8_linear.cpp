// The int8 linear in one native call: per-token quantization of the activations, fbgemm's u8 x s8
// GEMM with exact int32 sums written into the output tensor's memory, and the rescale/zero-point/
// bias epilogue that turns them into floats in place (no extra buffer), with a fused activation
// (GELU, ReLU) applied to each row while it is still in cache. Long calls go in chunks of rows,
// each thread through its own rows, so the int32 sums are rescaled while still in cache.
//
// fbgemm serves every token count: with both running on all threads, oneDNN's GEMM
// (onednn::qlinear_pointwise) was no faster at any size measured, and 2-4x slower at 1024+ tokens
// of 384 features; one packed copy per layer also keeps the weight in memory once.
#include "int8_linear.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <memory>
#include <vector>

#include "quantize_rows.h"

namespace quantcore_native {
namespace {

// Rows quantized or rescaled per parallel task: enough work to pay for a task.
int64_t row_grain(int64_t width) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1)); }

// Calls whose int32 sums outgrow this many bytes go through in chunks of rows that fit it, each
// chunk quantized, multiplied and rescaled while it is in cache (the sums of a whole call would
// go out to memory and come back for the rescale)...
constexpr int64_t kChunkBytes = 256 * 1024;
// ...but no chunk has fewer rows than this, nor a thread fewer: each chunk reads the whole
// weight again, and fbgemm's own split of a short call gives each thread part of it. Measured
// (1 and 2 threads, 64-4096 tokens, 384-4096 wide): 2-8 % faster where the sums outgrow the
// cache and the weight does not dominate, within noise elsewhere; chunks of 8-32 rows made
// 4096x4096 layers up to 9 % slower.
constexpr int64_t kChunkRows = 128;

}  // namespace

bool cpu_supported() { return fbgemm::fbgemmSupportedCPU(); }

Int8Linear::Int8Linear(const at::Tensor& weight, const at::Tensor& scales, int64_t bits,
                       bool symmetric)
    : NativeLinear(weight.size(0), weight.size(1)), symmetric_(symmetric) {
  TORCH_CHECK(cpu_supported(), "quantcore_native: fbgemm does not support this CPU");
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kChar && weight.device().is_cpu(),
              "quantcore_native: the weight must be a 2-D int8 CPU tensor");
  TORCH_CHECK(scales.dim() == 1 && scales.size(0) == out_ && scales.scalar_type() == at::kFloat,
              "quantcore_native: the scales must be float32, one per output channel");
  TORCH_CHECK(bits >= 2 && bits <= 8, "quantcore_native: activations take 2 to 8 bits, not ", bits);
  const int32_t half = 1 << (bits - 1);
  qmax_ = half - 1;
  steps_ = 2 * half - 1;  // asymmetric range [-half, half - 1]
  const at::Tensor w = weight.contiguous();
  // Weights of 2 MiB and more on 2 MiB pages (huge_pages.h). Measured in one process against
  // 4 KiB pages: a 1.1B decoder's decode step 3-10 % faster (1 and 2 threads); fbgemm's GEMM
  // alone at one token of 2048 -> 5632, 5632 -> 2048 and 4096 -> 4096 16-21 % faster (weights
  // that fit the L3), at 8-128 tokens 1-3 %. fbgemm's own allocation for B has the same size.
  packed_memory_ = huge_page_memory(
      static_cast<size_t>(fbgemm::PackBMatrix<int8_t>::packedBufferSize(in_, out_)));
  packed_ = std::make_unique<fbgemm::PackBMatrix<int8_t>>(
      fbgemm::matrix_op_t::Transpose, in_, out_, w.data_ptr<int8_t>(), in_,
      static_cast<int8_t*>(packed_memory_.get()), 1);
  scales_ = scales.contiguous().clone();
  // row sums row by row: w.sum(dtype=int32) would first convert the whole weight to int32
  colsum_ = at::empty({out_}, at::kInt);
  const int8_t* rows = w.data_ptr<int8_t>();
  int32_t* sums = colsum_.data_ptr<int32_t>();
  at::parallel_for(0, out_, 64, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      int32_t total = 0;
      for (int64_t k = 0; k < in_; ++k) total += rows[n * in_ + k];
      sums[n] = total;
    }
  });
}

void Int8Linear::quantize_rows(const float* x, int64_t begin, int64_t end, uint8_t* u,
                               RowParams* params) const {
  for (int64_t m = begin; m < end; ++m) {
    params[m] = symmetric_ ? quantize_row_symmetric(x + m * in_, in_, qmax_, u + m * in_)
                           : quantize_row_asymmetric(x + m * in_, in_, steps_, u + m * in_);
  }
}

void Int8Linear::multiply(const uint8_t* u, int64_t rows, int32_t* acc, int task, int tasks) const {
  fbgemm::PackAMatrix<uint8_t> packed_a(fbgemm::matrix_op_t::NoTranspose, rows, in_, u, in_,
                                        nullptr, 1);
  fbgemm::DoNothing<int32_t, int32_t> done;
  fbgemm::memCopy<> copy(done);
  fbgemm::fbgemmPacked(packed_a, *packed_, acc, acc, out_, copy, task, tasks);
}

void Int8Linear::finish_rows(int64_t begin, int64_t end, const RowParams* params,
                             const float* bias, float* y, Activation act) const {
  const float* wscale = scales_.data_ptr<float>();
  const int32_t* colsum = colsum_.data_ptr<int32_t>();
  const auto* acc = reinterpret_cast<const int32_t*>(y);
  for (int64_t m = begin; m < end; ++m) {
    dequantize_row(acc + m * out_, out_, params[m], colsum, wscale, bias, y + m * out_);
    activation_inplace(act, y + m * out_, out_);  // while the row is in cache
  }
}

void Int8Linear::run(const float* x, int64_t tokens, const float* bias, float* y,
                     Activation act) const {
  if (tokens == 0) return;
  const int threads = at::get_num_threads();
  // every byte of u is written before it is read: no zero-filling
  std::unique_ptr<uint8_t[]> u_buffer(new uint8_t[static_cast<size_t>(tokens * in_)]);
  uint8_t* u = u_buffer.get();
  std::vector<RowParams> params(static_cast<size_t>(tokens));
  // fbgemm writes int32 sums into y's memory; finish_rows turns them into floats in place.
  auto* acc = reinterpret_cast<int32_t*>(y);
  if (tokens * out_ * 4 > kChunkBytes && tokens >= kChunkRows * threads &&
      !at::in_parallel_region()) {
    // one parallel region: each thread its own rows, chunk by chunk
    const int64_t chunk = std::max<int64_t>(kChunkRows, kChunkBytes / (out_ * 4));
    const int64_t per_thread = (tokens + threads - 1) / threads;
    at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t first = task * per_thread, last = std::min(tokens, first + per_thread);
        for (int64_t m = first; m < last; m += chunk) {
          const int64_t stop = std::min(last, m + chunk);
          quantize_rows(x, m, stop, u, params.data());
          multiply(u + m * in_, stop - m, acc + m * out_, 0, 1);
          finish_rows(m, stop, params.data(), bias, y, act);
        }
      }
    });
    return;
  }
  at::parallel_for(0, tokens, row_grain(in_), [&](int64_t begin, int64_t end) {
    quantize_rows(x, begin, end, u, params.data());
  });
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      multiply(u, tokens, acc, static_cast<int>(task), threads);
    }
  });
  at::parallel_for(0, tokens, row_grain(out_), [&](int64_t begin, int64_t end) {
    finish_rows(begin, end, params.data(), bias, y, act);
  });
}

at::Tensor Int8Linear::unpack() const {
  at::Tensor w = at::empty({out_, in_}, at::dtype(at::kChar));
  packed_->unpack(w.data_ptr<int8_t>());
  return w;
}

}  // namespace quantcore_native
