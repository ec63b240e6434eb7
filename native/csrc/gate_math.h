// Elementwise functions vectorized with the Sleef routines torch's CPU ops use, so results match
// torch closely: the recurrent loops' gates (sigmoid = 1 / (1 + exp(-x)), tanh) and the
// activations a linear layer can apply to its output in the same pass (fused epilogue).
#pragma once

#include <cstdint>

namespace quantcore_native {

void sigmoid_inplace(float* x, int64_t n);
void tanh_inplace(float* x, int64_t n);

// The activations a linear kernel fuses; the codes are part of the Python interface
// (quantcore_native.ACTIVATION_CODES).
enum class Activation : int64_t { kNone = 0, kRelu = 1, kGelu = 2, kGeluTanh = 3, kSilu = 4 };

Activation activation_from_code(int64_t code);
// relu: max(x, 0); gelu: x/2 (1 + erf(x / sqrt 2)); gelu_tanh: x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)));
// silu: x / (1 + exp(-x))
void activation_inplace(Activation act, float* x, int64_t n);

}  // namespace quantcore_native
