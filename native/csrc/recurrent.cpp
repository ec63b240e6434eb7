// The recurrent loops. Each step follows the arithmetic of quantcore_layers.recurrent._step
// (torch's own cell equations), on buffers allocated once per call.
#include "recurrent.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>

#include "gate_math.h"

namespace quantcore_native {
namespace {

CellMode parse_mode(const std::string& mode) {
  if (mode == "LSTM") return CellMode::kLstm;
  if (mode == "GRU") return CellMode::kGru;
  if (mode == "RNN_TANH") return CellMode::kRnnTanh;
  if (mode == "RNN_RELU") return CellMode::kRnnRelu;
  TORCH_CHECK(false, "quantcore_native: unknown recurrent mode ", mode);
}

const float* data_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

at::Tensor float_bias(const std::optional<at::Tensor>& bias) {
  if (!bias.has_value() || !bias->defined()) return at::Tensor();
  return bias->to(at::kFloat).contiguous();
}

// pre = gi + gh, then c_new = sigmoid(f) * c + sigmoid(i) * tanh(g), h_new = sigmoid(o) * tanh(c_new)
void lstm_step(const float* gi, const float* gh, const float* c, int64_t hidden, float* pre,
               float* h_new, float* c_new) {
  const int64_t width = 4 * hidden;
  for (int64_t j = 0; j < width; ++j) pre[j] = gi[j] + gh[j];
  sigmoid_inplace(pre, 2 * hidden);
  tanh_inplace(pre + 2 * hidden, hidden);
  sigmoid_inplace(pre + 3 * hidden, hidden);
  const float *i = pre, *f = pre + hidden, *g = pre + 2 * hidden, *o = pre + 3 * hidden;
  for (int64_t j = 0; j < hidden; ++j) c_new[j] = f[j] * c[j] + i[j] * g[j];
  std::memcpy(h_new, c_new, sizeof(float) * hidden);
  tanh_inplace(h_new, hidden);
  for (int64_t j = 0; j < hidden; ++j) h_new[j] = o[j] * h_new[j];
}

// r = sigmoid(ir + hr), z = sigmoid(iz + hz), n = tanh(in + r * hn), h_new = (1 - z) * n + z * h
void gru_step(const float* gi, const float* gh, const float* h, int64_t hidden, float* pre,
              float* h_new) {
  for (int64_t j = 0; j < 2 * hidden; ++j) pre[j] = gi[j] + gh[j];
  sigmoid_inplace(pre, 2 * hidden);
  const float *r = pre, *z = pre + hidden;
  float* n = pre + 2 * hidden;
  for (int64_t j = 0; j < hidden; ++j) n[j] = gi[2 * hidden + j] + r[j] * gh[2 * hidden + j];
  tanh_inplace(n, hidden);
  for (int64_t j = 0; j < hidden; ++j) h_new[j] = (1.0f - z[j]) * n[j] + z[j] * h[j];
}

void rnn_step(const float* gi, const float* gh, int64_t hidden, bool relu, float* h_new) {
  for (int64_t j = 0; j < hidden; ++j) h_new[j] = gi[j] + gh[j];
  if (relu) {
    for (int64_t j = 0; j < hidden; ++j) h_new[j] = std::max(h_new[j], 0.0f);
  } else {
    tanh_inplace(h_new, hidden);
  }
}

}  // namespace

Recurrent::Recurrent(const std::string& mode, int64_t hidden_size, int64_t num_layers,
                                 bool bidirectional)
    : mode_(parse_mode(mode)),
      hidden_(hidden_size),
      layers_(num_layers),
      directions_(bidirectional ? 2 : 1) {}

int64_t Recurrent::gates() const {
  switch (mode_) {
    case CellMode::kLstm:
      return 4;
    case CellMode::kGru:
      return 3;
    default:
      return 1;
  }
}

void Recurrent::add_cell(Packed ih, Packed hh, const std::optional<at::Tensor>& bias_ih,
                               const std::optional<at::Tensor>& bias_hh) {
  TORCH_CHECK(ih->out_features() == gates() * hidden_ && hh->out_features() == gates() * hidden_,
              "quantcore_native: recurrent weights do not match the hidden size");
  cells_.push_back(Cell{std::move(ih), std::move(hh), Packed(), float_bias(bias_ih),
                        float_bias(bias_hh)});
}

void Recurrent::add_projection(Packed hr) {
  TORCH_CHECK(!cells_.empty() && mode_ == CellMode::kLstm && hr->in_features() == hidden_,
              "quantcore_native: a projection belongs to an LSTM cell");
  cells_.back().hr = std::move(hr);
}

void Recurrent::run_direction(const Cell& cell, int direction, const at::Tensor& input,
                                    const int64_t* lengths, at::Tensor& h, at::Tensor& c,
                                    at::Tensor& output) const {
  const int64_t steps = input.size(0), batch = input.size(1), width = gates() * hidden_;
  const int64_t out_size = h.size(1), out_stride = output.size(2);
  at::Tensor gi = at::empty({steps * batch, width}, input.options());
  cell.ih->run(input.data_ptr<float>(), steps * batch, data_or_null(cell.bias_ih),
               gi.data_ptr<float>());
  at::Tensor gh = at::empty({batch, width}, input.options());
  at::Tensor pre = at::empty({width}, input.options());
  at::Tensor h_raw = at::empty({batch, hidden_}, input.options());  // before any projection
  at::Tensor c_new = at::empty({batch, hidden_}, input.options());
  at::Tensor h_new = cell.hr ? at::empty({batch, out_size}, input.options()) : h_raw;
  float *hp = h.data_ptr<float>(), *cp = c.defined() ? c.data_ptr<float>() : nullptr;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t t = direction == 0 ? s : steps - 1 - s;
    cell.hh->run(hp, batch, data_or_null(cell.bias_hh), gh.data_ptr<float>());
    for (int64_t b = 0; b < batch; ++b) {
      const float* gib = gi.data_ptr<float>() + (t * batch + b) * width;
      const float* ghb = gh.data_ptr<float>() + b * width;
      float* hb = h_raw.data_ptr<float>() + b * hidden_;
      if (mode_ == CellMode::kLstm) {
        lstm_step(gib, ghb, cp + b * hidden_, hidden_, pre.data_ptr<float>(), hb,
                  c_new.data_ptr<float>() + b * hidden_);
      } else if (mode_ == CellMode::kGru) {
        gru_step(gib, ghb, hp + b * out_size, hidden_, pre.data_ptr<float>(), hb);
      } else {
        rnn_step(gib, ghb, hidden_, mode_ == CellMode::kRnnRelu, hb);
      }
    }
    if (cell.hr) cell.hr->run(h_raw.data_ptr<float>(), batch, nullptr, h_new.data_ptr<float>());
    for (int64_t b = 0; b < batch; ++b) {
      float* out = output.data_ptr<float>() + (t * batch + b) * out_stride + direction * out_size;
      if (lengths != nullptr && t >= lengths[b]) continue;  // padding: state kept, output zero
      std::memcpy(hp + b * out_size, h_new.data_ptr<float>() + b * out_size, sizeof(float) * out_size);
      if (cp != nullptr) {
        std::memcpy(cp + b * hidden_, c_new.data_ptr<float>() + b * hidden_, sizeof(float) * hidden_);
      }
      std::memcpy(out, hp + b * out_size, sizeof(float) * out_size);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> Recurrent::forward(
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& lengths) const {
  TORCH_CHECK(static_cast<int64_t>(cells_.size()) == layers_ * directions_,
              "quantcore_native: the recurrent layer is missing cells");
  TORCH_CHECK(x.dim() == 3 && x.device().is_cpu(),
              "quantcore_native: recurrent input must be [steps, batch, features] on the CPU");
  const bool lstm = mode_ == CellMode::kLstm;
  at::Tensor h_n = h0.to(at::kFloat).contiguous().clone();
  at::Tensor c_n = lstm ? c0.to(at::kFloat).contiguous().clone() : c0;  // unused outside LSTM
  at::Tensor lens = lengths.defined() && lengths.numel() > 0 ? lengths.to(at::kLong).contiguous()
                                                             : at::Tensor();
  const int64_t out_size = h_n.size(2);
  at::Tensor layer_input = x.to(at::kFloat).contiguous();
  for (int64_t layer = 0; layer < layers_; ++layer) {
    at::Tensor output =
        at::zeros({x.size(0), x.size(1), directions_ * out_size}, layer_input.options());
    for (int64_t d = 0; d < directions_; ++d) {
      const int64_t index = layer * directions_ + d;
      at::Tensor h = h_n[index];
      at::Tensor c = lstm ? c_n[index] : at::Tensor();
      run_direction(cells_[index], static_cast<int>(d), layer_input,
                    lens.defined() ? lens.data_ptr<int64_t>() : nullptr, h, c, output);
    }
    layer_input = output;
  }
  return {layer_input, h_n, c_n};
}

}  // namespace quantcore_native
