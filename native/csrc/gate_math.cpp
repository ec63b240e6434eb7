#include "gate_math.h"

#include "cpu_isa.h"

#include <immintrin.h>

#include <c10/util/Exception.h>

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

constexpr float kSqrtHalf = 0.70710678118654752f;   // 1 / sqrt(2)
constexpr float kSqrtTwoOverPi = 0.79788456080286536f;
constexpr float kGeluCubic = 0.044715f;
constexpr float kErfP = 0.3275911f;
constexpr float kErfA1 = 0.254829592f, kErfA2 = -0.284496736f, kErfA3 = 1.421413741f;
constexpr float kErfA4 = -1.453152027f, kErfA5 = 1.061405429f;

void relu_scalar(float* x, int64_t start, int64_t n) {
  for (int64_t i = start; i < n; ++i) x[i] = x[i] > 0.0f ? x[i] : (x[i] == x[i] ? 0.0f : x[i]);
}

void gelu_scalar(float* x, int64_t start, int64_t n) {
  for (int64_t i = start; i < n; ++i) x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * kSqrtHalf));
}

void silu_scalar(float* x, int64_t start, int64_t n) {
  for (int64_t i = start; i < n; ++i) x[i] = x[i] / (1.0f + std::exp(-x[i]));
}

void gelu_tanh_scalar(float* x, int64_t start, int64_t n) {
  for (int64_t i = start; i < n; ++i) {
    const float v = x[i];
    x[i] = 0.5f * v * (1.0f + std::tanh(kSqrtTwoOverPi * (v + kGeluCubic * v * v * v)));
  }
}

__attribute__((target("avx512f"))) void relu_avx512(float* x, int64_t n) {
  int64_t i = 0;
  const __m512 zero = _mm512_setzero_ps();
  // max(x, 0) with x second: a NaN input stays NaN, as torch.relu keeps it
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_max_ps(zero, _mm512_loadu_ps(x + i)));
  relu_scalar(x, i, n);
}

// erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), the formula torch's own
// vectorized CPU erf evaluates: Sleef's erf is several times slower and no more useful here.
// float bit operations in AVX512F alone (the _ps forms need AVX512DQ)
__attribute__((target("avx512f"))) inline __m512 bits_and(__m512 a, __m512 b) {
  return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_castps_si512(b)));
}

__attribute__((target("avx512f"))) inline __m512 bits_xor(__m512 a, __m512 b) {
  return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a), _mm512_castps_si512(b)));
}

__attribute__((target("avx512f"))) __m512 erf_avx512(__m512 v) {
  const __m512 one = _mm512_set1_ps(1.0f), sign_bit = _mm512_set1_ps(-0.0f);
  const __m512 sign = bits_and(sign_bit, v);
  const __m512 a = _mm512_abs_ps(v);
  const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(kErfP), a, one));
  __m512 r = _mm512_fmadd_ps(_mm512_set1_ps(kErfA5), t, _mm512_set1_ps(kErfA4));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(kErfA3));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(kErfA2));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(kErfA1));
  const __m512 e = Sleef_expf16_u10avx512f(bits_xor(sign_bit, _mm512_mul_ps(v, v)));
  // 1 - r t exp(-x^2), with the sign of x
  const __m512 y = _mm512_fnmadd_ps(_mm512_mul_ps(e, t), r, one);
  return bits_xor(sign, y);
}

__attribute__((target("avx512f"))) void gelu_avx512(float* x, int64_t n) {
  const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
  const __m512 scale = _mm512_set1_ps(kSqrtHalf);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __m512 e = erf_avx512(_mm512_mul_ps(v, scale));
    _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_mul_ps(half, v), _mm512_add_ps(one, e)));
  }
  gelu_scalar(x, i, n);
}

__attribute__((target("avx512f"))) void gelu_tanh_avx512(float* x, int64_t n) {
  const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
  const __m512 k0 = _mm512_set1_ps(kSqrtTwoOverPi), k1 = _mm512_set1_ps(kGeluCubic);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __m512 cube = _mm512_mul_ps(_mm512_mul_ps(v, v), v);
    const __m512 inner = _mm512_mul_ps(k0, _mm512_fmadd_ps(k1, cube, v));
    const __m512 t = Sleef_tanhf16_u10avx512f(inner);
    _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_mul_ps(half, v), _mm512_add_ps(one, t)));
  }
  gelu_tanh_scalar(x, i, n);
}

__attribute__((target("avx512f"))) void silu_avx512(float* x, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __m512 e = Sleef_expf16_u10avx512f(_mm512_sub_ps(_mm512_setzero_ps(), v));
    _mm512_storeu_ps(x + i, _mm512_div_ps(v, _mm512_add_ps(one, e)));
  }
  silu_scalar(x, i, n);
}

__attribute__((target("avx2,fma"))) void silu_avx2(float* x, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 e = Sleef_expf8_u10avx2(_mm256_sub_ps(_mm256_setzero_ps(), v));
    _mm256_storeu_ps(x + i, _mm256_div_ps(v, _mm256_add_ps(one, e)));
  }
  silu_scalar(x, i, n);
}

__attribute__((target("avx2,fma"))) void relu_avx2(float* x, int64_t n) {
  int64_t i = 0;
  const __m256 zero = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_max_ps(zero, _mm256_loadu_ps(x + i)));
  relu_scalar(x, i, n);
}

__attribute__((target("avx2,fma"))) __m256 erf_avx2(__m256 v) {
  const __m256 one = _mm256_set1_ps(1.0f), sign_bit = _mm256_set1_ps(-0.0f);
  const __m256 sign = _mm256_and_ps(sign_bit, v);
  const __m256 a = _mm256_andnot_ps(sign_bit, v);
  const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(kErfP), a, one));
  __m256 r = _mm256_fmadd_ps(_mm256_set1_ps(kErfA5), t, _mm256_set1_ps(kErfA4));
  r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(kErfA3));
  r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(kErfA2));
  r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(kErfA1));
  const __m256 e = Sleef_expf8_u10avx2(_mm256_xor_ps(sign_bit, _mm256_mul_ps(v, v)));
  const __m256 y = _mm256_fnmadd_ps(_mm256_mul_ps(e, t), r, one);
  return _mm256_xor_ps(sign, y);
}

__attribute__((target("avx2,fma"))) void gelu_avx2(float* x, int64_t n) {
  const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
  const __m256 scale = _mm256_set1_ps(kSqrtHalf);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 e = erf_avx2(_mm256_mul_ps(v, scale));
    _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, e)));
  }
  gelu_scalar(x, i, n);
}

__attribute__((target("avx2,fma"))) void gelu_tanh_avx2(float* x, int64_t n) {
  const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
  const __m256 k0 = _mm256_set1_ps(kSqrtTwoOverPi), k1 = _mm256_set1_ps(kGeluCubic);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 cube = _mm256_mul_ps(_mm256_mul_ps(v, v), v);
    const __m256 inner = _mm256_mul_ps(k0, _mm256_fmadd_ps(k1, cube, v));
    const __m256 t = Sleef_tanhf8_u10avx2(inner);
    _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, t)));
  }
  gelu_tanh_scalar(x, i, n);
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

Activation activation_from_code(int64_t code) {
  TORCH_CHECK(code >= 0 && code <= static_cast<int64_t>(Activation::kSilu),
              "quantcore_native: unknown activation code ", code);
  return static_cast<Activation>(code);
}

void activation_inplace(Activation act, float* x, int64_t n) {
  const Isa level = isa();
  switch (act) {
    case Activation::kNone:
      return;
    case Activation::kRelu:
      if (level == Isa::kAvx512) return relu_avx512(x, n);
      if (level == Isa::kAvx2) return relu_avx2(x, n);
      return relu_scalar(x, 0, n);
    case Activation::kGelu:
      if (level == Isa::kAvx512) return gelu_avx512(x, n);
      if (level == Isa::kAvx2) return gelu_avx2(x, n);
      return gelu_scalar(x, 0, n);
    case Activation::kGeluTanh:
      if (level == Isa::kAvx512) return gelu_tanh_avx512(x, n);
      if (level == Isa::kAvx2) return gelu_tanh_avx2(x, n);
      return gelu_tanh_scalar(x, 0, n);
    case Activation::kSilu:
      if (level == Isa::kAvx512) return silu_avx512(x, n);
      if (level == Isa::kAvx2) return silu_avx2(x, n);
      return silu_scalar(x, 0, n);
  }
}

}  // namespace quantcore_native
