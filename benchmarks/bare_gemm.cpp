// fbgemm's u8 x s8 -> int32 GEMM alone, on operands prepared outside the timing: the floor under
// any dynamically quantized linear layer built on it (quantcore's and torch.ao's both are), with
// the weight packed as quantcore packs it.
// Built by benchmarks/bare_gemm.py with torch's cpp_extension; not part of quantcore.
#include <fbgemm/Fbgemm.h>
#include <torch/extension.h>

#include <chrono>
#include <vector>

#include "huge_pages.h"  // native/csrc: the weight packed as quantcore packs it

// Best of `rounds` rounds of `calls` GEMMs (m x k times k x n), in seconds per GEMM, one thread.
double bare_gemm_seconds(int64_t m, int64_t k, int64_t n, int64_t rounds, int64_t calls) {
  std::vector<uint8_t> a(m * k);
  std::vector<int8_t> b(k * n);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<uint8_t>(i * 7 % 251);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<int8_t>(static_cast<int>(i * 13 % 255) - 127);
  const quantcore_native::HugePageMemory memory = quantcore_native::huge_page_memory(
      static_cast<size_t>(fbgemm::PackBMatrix<int8_t>::packedBufferSize(k, n)));
  fbgemm::PackBMatrix<int8_t> packed_b(fbgemm::matrix_op_t::Transpose, k, n, b.data(), k,
                                       static_cast<int8_t*>(memory.get()), 1);
  double best = 1e30;
  for (int64_t round = 0; round < rounds; ++round) {
    const auto start = std::chrono::steady_clock::now();
    for (int64_t call = 0; call < calls; ++call) {
      at::Tensor out = at::empty({m, n}, at::kInt);  // as a layer allocates its output
      fbgemm::PackAMatrix<uint8_t> packed_a(fbgemm::matrix_op_t::NoTranspose, m, k, a.data(), k,
                                            nullptr, 1);
      fbgemm::DoNothing<int32_t, int32_t> done;
      fbgemm::memCopy<> copy(done);
      int32_t* c = out.data_ptr<int32_t>();
      fbgemm::fbgemmPacked(packed_a, packed_b, c, c, n, copy, 0, 1);
    }
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    best = std::min(best, took.count() / calls);
  }
  return best;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("bare_gemm_seconds", &bare_gemm_seconds);
}
