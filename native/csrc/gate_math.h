// Elementwise gate functions for the recurrent loops, vectorized with the same Sleef routines
// torch's CPU sigmoid/tanh use (sigmoid = 1 / (1 + exp(-x))), so results match torch closely.
#pragma once

#include <cstdint>

namespace quantcore_native {

void sigmoid_inplace(float* x, int64_t n);
void tanh_inplace(float* x, int64_t n);

}  // namespace quantcore_native
