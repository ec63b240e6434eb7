// Per-token (per-row) activation quantization, written to give the same integers as
// quantcore_int8.quantization.quantize_activation: float32 arithmetic in the same order (the
// products by a reciprocal computed as the reference computes it), round half to even.
//
// The loops are compiled for AVX512, AVX2 and baseline x86-64 (GCC target_clones picks one at load
// time); no fast-math, so the vector code rounds exactly as the scalar code would.
#pragma once

#include <cstdint>

namespace quantcore_native {

// How one row was quantized: the GEMM input is u = q - offset_base in [0, 255], and
// sum_k (q_k - zero_point) w_k = sum_k u_k w_k - zero * sum_k w_k.
struct RowParams {
  float scale;  // the row's step; non-finite when the row holds NaN/Inf
  int32_t zero;  // subtracted from u: the zero point on the unsigned scale
};

// Symmetric rows: bound = max|x| (at least 1e-30), q = round(x * (qmax / bound)) with qmax / bound
// computed as torch does it (reciprocal(bound) * qmax), u = q + qmax + 1.
RowParams quantize_row_symmetric(const float* x, int64_t k, int32_t qmax, uint8_t* u);

// Asymmetric rows: scale = (high / steps - low / steps) with low <= 0 <= high, zero point
// clamp(-round(low / scale), 0, steps), u = clamp(round(x * (1 / scale)) + zero, 0, steps).
RowParams quantize_row_asymmetric(const float* x, int64_t k, int32_t steps, uint8_t* u);

// y[n] = (acc[n] - zero * colsum[n]) * (scale * wscale[n]) + bias[n] (bias may be null);
// a row whose scale is not finite is all NaN, as the reference's is.
void dequantize_row(
    const int32_t* acc,
    int64_t n,
    const RowParams& row,
    const int32_t* colsum,
    const float* wscale,
    const float* bias,
    float* y);

}  // namespace quantcore_native
