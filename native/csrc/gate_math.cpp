#include "gate_math.h"

#include "cpu_isa.h"

#include <immintrin.h>

#include <cmath>

// Sleef's vector routines, exported by libtorch_cpu (torch's own sigmoid/tanh call them). sleef.h
// declares them only when the whole file is compiled for that ISA, so they are declared here.
extern "C" {
__attribute__((target("avx512f"))) __m512 Sleef_expf16_u10avx512f(__m512);
__attribute__((target("avx512f"))) __m512 Sleef_tanhf16_u10avx512f(__m512);
__attribute__((target("avx2,fma"))) __m256 Sleef_expf8_u10avx2(__m256);
__attribute__((target("avx2,fma"))) __m256 Sleef_tanhf8_u10avx2(__m256);
}

namespace quantcore_native {
namespace {

void sigmoid_scalar(float* x, int64_t start, int64_t n) {
  for (int64_t i = start; i < n; ++i) x[i] = 1.0f / (1.0f + std::exp(-x[i]));
}

void tanh_scalar(float* x, int64_t start, int64_t n) {
  for (int64_t i = start; i < n; ++i) x[i] = std::tanh(x[i]);
}

__attribute__((target("avx512f"))) void sigmoid_avx512(float* x, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 e = Sleef_expf16_u10avx512f(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_loadu_ps(x + i)));
    _mm512_storeu_ps(x + i, _mm512_div_ps(one, _mm512_add_ps(one, e)));
  }
  sigmoid_scalar(x, i, n);
}

__attribute__((target("avx512f"))) void tanh_avx512(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, Sleef_tanhf16_u10avx512f(_mm512_loadu_ps(x + i)));
  tanh_scalar(x, i, n);
}

__attribute__((target("avx2,fma"))) void sigmoid_avx2(float* x, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = Sleef_expf8_u10avx2(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_loadu_ps(x + i)));
    _mm256_storeu_ps(x + i, _mm256_div_ps(one, _mm256_add_ps(one, e)));
  }
  sigmoid_scalar(x, i, n);
}

__attribute__((target("avx2,fma"))) void tanh_avx2(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, Sleef_tanhf8_u10avx2(_mm256_loadu_ps(x + i)));
  tanh_scalar(x, i, n);
}

}  // namespace

void sigmoid_inplace(float* x, int64_t n) {
  switch (isa()) {
    case Isa::kAvx512:
      return sigmoid_avx512(x, n);
    case Isa::kAvx2:
      return sigmoid_avx2(x, n);
    default:
      return sigmoid_scalar(x, 0, n);
  }
}

void tanh_inplace(float* x, int64_t n) {
  switch (isa()) {
    case Isa::kAvx512:
      return tanh_avx512(x, n);
    case Isa::kAvx2:
      return tanh_avx2(x, n);
    default:
      return tanh_scalar(x, 0, n);
  }
}

}  // namespace quantcore_native
