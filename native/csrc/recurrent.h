// A whole LSTM / GRU / RNN (all layers and directions) run in native code over its layers'
// packed linear weights (int8 or float16): the input projection of every time step in one GEMM, then the
// recurrence step by step, with no Python between steps.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "native_linear.h"

namespace quantcore_native {

enum class CellMode { kLstm, kGru, kRnnTanh, kRnnRelu };

class Recurrent {
 public:
  using Packed = std::shared_ptr<NativeLinear>;

  // mode: "LSTM", "GRU", "RNN_TANH" or "RNN_RELU" (torch's own names)
  Recurrent(const std::string& mode, int64_t hidden_size, int64_t num_layers,
                  bool bidirectional);

  // One call per layer and direction, in torch's order (l0, l0_reverse, l1, ...).
  void add_cell(Packed ih, Packed hh, const std::optional<at::Tensor>& bias_ih,
                const std::optional<at::Tensor>& bias_hh);
  // The LSTM projection (proj_size) of the cell added last.
  void add_projection(Packed hr);

  // x: [steps, batch, input]; h0: [layers * directions, batch, out]; c0: [..., hidden] (LSTM), else
  // any tensor (returned as it is); lengths: int64 [batch] for padded sequences, or empty.
  // Returns (output, h_n, c_n).
  std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& x, const at::Tensor& h0,
                                                         const at::Tensor& c0,
                                                         const at::Tensor& lengths) const;

 private:
  struct Cell {
    Packed ih, hh, hr;
    at::Tensor bias_ih, bias_hh;  // float32 or undefined
  };

  void run_direction(const Cell& cell, int direction, const at::Tensor& input,
                     const int64_t* lengths, at::Tensor& h, at::Tensor& c,
                     at::Tensor& output) const;
  int64_t gates() const;

  CellMode mode_;
  int64_t hidden_;
  int64_t layers_;
  int64_t directions_;
  std::vector<Cell> cells_;
};

}  // namespace quantcore_native
