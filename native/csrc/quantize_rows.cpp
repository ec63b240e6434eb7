// Vector code for the per-row steps around the int8 GEMM. Each step has an AVX512, an AVX2 and a
// scalar version with the same float32 operations in the same order, so they give the same bits.
#include "quantize_rows.h"

#include "cpu_isa.h"

#include <immintrin.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>

namespace quantcore_native {
namespace {

constexpr float kMinBound = 1e-30f;  // quantization.MIN_ACTIVATION_BOUND
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// ------------------------------------------------------------------ range of a row: min, max, NaN

struct Range {
  float low;
  float high;
  bool nan;
};

Range range_scalar(const float* x, int64_t k, int64_t start, Range r) {
  for (int64_t i = start; i < k; ++i) {
    const float v = x[i];
    r.nan |= v != v;
    r.low = v < r.low ? v : r.low;
    r.high = v > r.high ? v : r.high;
  }
  return r;
}

__attribute__((target("avx512f,avx512bw"))) Range range_avx512(const float* x, int64_t k) {
  __m512 low = _mm512_set1_ps(INFINITY), high = _mm512_set1_ps(-INFINITY);
  __mmask16 nan = 0;
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    low = _mm512_min_ps(low, v);
    high = _mm512_max_ps(high, v);
  }
  Range r{_mm512_reduce_min_ps(low), _mm512_reduce_max_ps(high), nan != 0};
  return range_scalar(x, k, i, r);
}

__attribute__((target("avx2,fma"))) Range range_avx2(const float* x, int64_t k) {
  __m256 low = _mm256_set1_ps(INFINITY), high = _mm256_set1_ps(-INFINITY);
  __m256 nan = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    low = _mm256_min_ps(low, v);
    high = _mm256_max_ps(high, v);
  }
  alignas(32) float lows[8], highs[8];
  _mm256_store_ps(lows, low);
  _mm256_store_ps(highs, high);
  Range r{INFINITY, -INFINITY, _mm256_movemask_ps(nan) != 0};
  for (int j = 0; j < 8; ++j) {
    r.low = std::min(r.low, lows[j]);
    r.high = std::max(r.high, highs[j]);
  }
  return range_scalar(x, k, i, r);
}

Range row_range(const float* x, int64_t k) {
  switch (isa()) {
    case Isa::kAvx512:
      return range_avx512(x, k);
    case Isa::kAvx2:
      return range_avx2(x, k);
    default:
      return range_scalar(x, k, 0, Range{INFINITY, -INFINITY, false});
  }
}

// ------------------------------------------------ u = clamp(round(x * factor) + zero, 0, top)

// factor is qmax / bound (symmetric) or 1 / scale (asymmetric), computed as the reference
// computes it; the product is rounded half to even.
void to_uint8_scalar(const float* x, int64_t k, int64_t start, float factor, float zero,
                     float top, uint8_t* u) {
  for (int64_t i = start; i < k; ++i) {
    const float q = std::nearbyint(x[i] * factor) + zero;
    u[i] = static_cast<uint8_t>(std::min(std::max(q, 0.0f), top));
  }
}

// 16 products rounded to int32 and shifted by zero. The clamp to [0, top] follows in the byte
// packing (signed saturation to int16, unsigned to uint8, then a minimum): the same as clamping
// first, for these products lie within about 256 of zero (|x| is at most the row's bound).
__attribute__((target("avx512f,avx512bw"))) inline __m512i products_avx512(const float* p,
                                                                           __m512 f, __m512i z) {
  const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(p), f);
  return _mm512_add_epi32(_mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), z);
}

__attribute__((target("avx512f,avx512bw"))) void to_uint8_avx512(
    const float* x, int64_t k, float factor, float zero, float top, uint8_t* u) {
  const __m512 f = _mm512_set1_ps(factor);
  const __m512i z = _mm512_set1_epi32(static_cast<int32_t>(zero));
  const __m512i hi = _mm512_set1_epi8(static_cast<char>(static_cast<int>(top)));
  // the packs interleave 128-bit lanes; this puts the 16 dwords of bytes back in order
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  int64_t i = 0;
  for (; i + 64 <= k; i += 64) {
    const __m512i a = products_avx512(x + i, f, z), b = products_avx512(x + i + 16, f, z);
    const __m512i c = products_avx512(x + i + 32, f, z), d = products_avx512(x + i + 48, f, z);
    const __m512i bytes =
        _mm512_packus_epi16(_mm512_packs_epi32(a, b), _mm512_packs_epi32(c, d));
    _mm512_storeu_si512(u + i, _mm512_permutexvar_epi32(order, _mm512_min_epu8(bytes, hi)));
  }
  to_uint8_scalar(x, k, i, factor, zero, top, u);
}

__attribute__((target("avx2,fma"))) inline __m256i integers_avx2(
    const float* p, __m256 f, __m256 z, __m256 lo, __m256 hi) {
  const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(p), f);
  __m256 q = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  q = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(q, z), lo), hi);
  return _mm256_cvtps_epi32(q);
}

__attribute__((target("avx2,fma"))) void to_uint8_avx2(
    const float* x, int64_t k, float factor, float zero, float top, uint8_t* u) {
  const __m256 f = _mm256_set1_ps(factor), z = _mm256_set1_ps(zero);
  const __m256 lo = _mm256_setzero_ps(), hi = _mm256_set1_ps(top);
  // packs interleave 128-bit lanes; this permutation puts the 32 bytes back in order
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    const __m256i a = integers_avx2(x + i, f, z, lo, hi);
    const __m256i b = integers_avx2(x + i + 8, f, z, lo, hi);
    const __m256i c = integers_avx2(x + i + 16, f, z, lo, hi);
    const __m256i d = integers_avx2(x + i + 24, f, z, lo, hi);
    const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(ab, cd), order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(u + i), bytes);
  }
  to_uint8_scalar(x, k, i, factor, zero, top, u);
}

void to_uint8(const float* x, int64_t k, float factor, float zero, float top, uint8_t* u) {
  switch (isa()) {
    case Isa::kAvx512:
      return to_uint8_avx512(x, k, factor, zero, top, u);
    case Isa::kAvx2:
      return to_uint8_avx2(x, k, factor, zero, top, u);
    default:
      return to_uint8_scalar(x, k, 0, factor, zero, top, u);
  }
}

// ------------------------------------------------------------------------------ the epilogue

void dequantize_scalar(const int32_t* acc, int64_t n, int64_t start, int32_t zero, float scale,
                       const int32_t* colsum, const float* wscale, const float* bias, float* y) {
  for (int64_t j = start; j < n; ++j) {
    const float exact = static_cast<float>(acc[j] - zero * colsum[j]);
    const float value = exact * (scale * wscale[j]);
    y[j] = bias ? value + bias[j] : value;
  }
}

__attribute__((target("avx512f,avx512bw"))) void dequantize_avx512(
    const int32_t* acc, int64_t n, int32_t zero, float scale, const int32_t* colsum,
    const float* wscale, const float* bias, float* y) {
  const __m512i z = _mm512_set1_epi32(zero);
  const __m512 s = _mm512_set1_ps(scale);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512i a = _mm512_loadu_si512(acc + j), c = _mm512_loadu_si512(colsum + j);
    const __m512 exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(a, _mm512_mullo_epi32(z, c)));
    __m512 value = _mm512_mul_ps(exact, _mm512_mul_ps(s, _mm512_loadu_ps(wscale + j)));
    if (bias) value = _mm512_add_ps(value, _mm512_loadu_ps(bias + j));
    _mm512_storeu_ps(y + j, value);
  }
  dequantize_scalar(acc, n, j, zero, scale, colsum, wscale, bias, y);
}

__attribute__((target("avx2,fma"))) void dequantize_avx2(
    const int32_t* acc, int64_t n, int32_t zero, float scale, const int32_t* colsum,
    const float* wscale, const float* bias, float* y) {
  const __m256i z = _mm256_set1_epi32(zero);
  const __m256 s = _mm256_set1_ps(scale);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + j));
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(colsum + j));
    const __m256 exact = _mm256_cvtepi32_ps(_mm256_sub_epi32(a, _mm256_mullo_epi32(z, c)));
    __m256 value = _mm256_mul_ps(exact, _mm256_mul_ps(s, _mm256_loadu_ps(wscale + j)));
    if (bias) value = _mm256_add_ps(value, _mm256_loadu_ps(bias + j));
    _mm256_storeu_ps(y + j, value);
  }
  dequantize_scalar(acc, n, j, zero, scale, colsum, wscale, bias, y);
}

}  // namespace

RowParams quantize_row_symmetric(const float* x, int64_t k, int32_t qmax, uint8_t* u) {
  const Range r = row_range(x, k);
  const float bound = std::max(std::max(-r.low, r.high), kMinBound);
  if (r.nan || !std::isfinite(bound)) {
    std::fill(u, u + k, static_cast<uint8_t>(qmax + 1));
    return RowParams{kNaN, qmax + 1};
  }
  // torch computes the reference's qmax / bound as reciprocal(bound) * qmax (Tensor.__rtruediv__):
  // the same two roundings here, or a value near a rounding tie could land on the other integer
  const float factor = (1.0f / bound) * static_cast<float>(qmax);
  const float zero = static_cast<float>(qmax + 1);  // u = q + qmax + 1 lies in [1, 2 qmax + 1]
  to_uint8(x, k, factor, zero, static_cast<float>(2 * qmax + 1), u);
  return RowParams{bound / static_cast<float>(qmax), qmax + 1};
}

RowParams quantize_row_asymmetric(const float* x, int64_t k, int32_t steps, uint8_t* u) {
  const Range r = row_range(x, k);
  const float low = std::min(r.low, 0.0f), high = std::max(r.high, 0.0f);
  const float n = static_cast<float>(steps);
  // high / n - low / n: the difference high - low overflows near float32's limit
  const float scale = std::max(high / n - low / n, FLT_MIN);
  if (r.nan || !std::isfinite(scale)) {
    std::fill(u, u + k, static_cast<uint8_t>(0));
    return RowParams{kNaN, 0};
  }
  const float zero = std::min(std::max(-std::nearbyint(low / scale), 0.0f), n);
  // the reference multiplies by reciprocal(scale): 1 / scale rounded once, as here
  to_uint8(x, k, 1.0f / scale, zero, n, u);
  return RowParams{scale, static_cast<int32_t>(zero)};
}

void dequantize_row(const int32_t* acc, int64_t n, const RowParams& row, const int32_t* colsum,
                    const float* wscale, const float* bias, float* y) {
  if (!std::isfinite(row.scale)) {
    std::fill(y, y + n, kNaN);
    return;
  }
  switch (isa()) {
    case Isa::kAvx512:
      return dequantize_avx512(acc, n, row.zero, row.scale, colsum, wscale, bias, y);
    case Isa::kAvx2:
      return dequantize_avx2(acc, n, row.zero, row.scale, colsum, wscale, bias, y);
    default:
      return dequantize_scalar(acc, n, 0, row.zero, row.scale, colsum, wscale, bias, y);
  }
}

}  // namespace quantcore_native
