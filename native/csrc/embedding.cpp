#include "embedding.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace quantcore_native {
namespace {

// The rows of a table as the reference dequantizes them.
class Table {
 public:
  Table(const at::Tensor& table, const std::optional<at::Tensor>& scale,
        const std::optional<at::Tensor>& zero_point)
      : rows_(table.size(0)), dim_(table.size(1)) {
    TORCH_CHECK(table.dim() == 2 && table.device().is_cpu() && table.is_contiguous(),
                "quantcore_native: the table must be a contiguous 2-D CPU tensor");
    if (table.scalar_type() == at::kHalf) {
      half_ = table.data_ptr<at::Half>();
      return;
    }
    TORCH_CHECK(table.scalar_type() == at::kChar && scale.has_value(),
                "quantcore_native: an int8 table needs its scales");
    int8_ = table.data_ptr<int8_t>();
    scale_ = scale->to(at::kFloat).contiguous();
    TORCH_CHECK(scale_.numel() == 1 || scale_.numel() == rows_,
                "quantcore_native: one scale per row, or one for the table");
    if (zero_point.has_value() && zero_point->defined()) {
      zero_ = zero_point->to(at::kFloat).contiguous();  // int32 values: exact in float32
      TORCH_CHECK(zero_.numel() == scale_.numel(), "quantcore_native: zero points as scales");
    }
  }

  int64_t rows() const { return rows_; }
  int64_t dim() const { return dim_; }

  // out[j] = the row's dequantized values: (float(q) - zero) * scale, or the float16 widened
  void row(int64_t index, float* out) const {
    if (half_ != nullptr) {
      const at::Half* h = half_ + index * dim_;
      for (int64_t j = 0; j < dim_; ++j) out[j] = static_cast<float>(h[j]);
      return;
    }
    const int64_t p = scale_.numel() == 1 ? 0 : index;
    const float s = scale_.data_ptr<float>()[p];
    const int8_t* q = int8_ + index * dim_;
    if (zero_.defined()) {
      const float z = zero_.data_ptr<float>()[p];
      for (int64_t j = 0; j < dim_; ++j) out[j] = (static_cast<float>(q[j]) - z) * s;
    } else {
      for (int64_t j = 0; j < dim_; ++j) out[j] = static_cast<float>(q[j]) * s;
    }
  }

 private:
  int64_t rows_;
  int64_t dim_;
  const int8_t* int8_ = nullptr;
  const at::Half* half_ = nullptr;
  at::Tensor scale_;
  at::Tensor zero_;
};

// torch's max_norm: a row whose p-norm exceeds max_norm is scaled by max_norm / (norm + 1e-7)
void renormalize(float* row, int64_t dim, double max_norm, double norm_type) {
  if (max_norm < 0) return;  // none
  double norm = 0;
  if (std::isinf(norm_type)) {
    for (int64_t j = 0; j < dim; ++j) norm = std::max(norm, std::abs(static_cast<double>(row[j])));
  } else {
    for (int64_t j = 0; j < dim; ++j) norm += std::pow(std::abs(static_cast<double>(row[j])), norm_type);
    norm = std::pow(norm, 1.0 / norm_type);
  }
  if (norm <= max_norm) return;
  const float scale = static_cast<float>(max_norm / (norm + 1e-7));
  for (int64_t j = 0; j < dim; ++j) row[j] *= scale;
}

int64_t checked_index(int64_t index, int64_t rows) {
  TORCH_CHECK_INDEX(index >= 0 && index < rows, "index ", index, " is out of range for a table of ",
                    rows, " rows");
  return index;
}

// Bag b covers input positions [starts[b], starts[b + 1]).
std::vector<int64_t> bag_starts(const at::Tensor& input, const std::optional<at::Tensor>& offsets,
                                bool include_last_offset) {
  const int64_t count = input.numel();
  std::vector<int64_t> starts;
  if (input.dim() == 2) {
    TORCH_CHECK(!offsets.has_value() || !offsets->defined(),
                "offsets must be None when the input is 2-D (each row is a bag)");
    for (int64_t b = 0; b <= input.size(0); ++b) starts.push_back(b * input.size(1));
    return starts;
  }
  TORCH_CHECK(input.dim() == 1 && offsets.has_value() && offsets->defined() && offsets->dim() == 1,
              "a 1-D input needs 1-D offsets");
  const at::Tensor o = offsets->to(at::kLong).contiguous();
  const int64_t* p = o.data_ptr<int64_t>();
  TORCH_CHECK(o.numel() == 0 || p[0] == 0, "offsets[0] has to be 0, i.e., the first sequence in "
              "the mini-batch has to start from position 0");
  starts.assign(p, p + o.numel());
  if (!include_last_offset) starts.push_back(count);
  for (size_t b = 1; b < starts.size(); ++b) {
    TORCH_CHECK(starts[b - 1] <= starts[b] && starts[b] <= count, "offsets must be increasing and "
                "within the input");
  }
  return starts;
}

}  // namespace

at::Tensor embedding(const at::Tensor& table, const std::optional<at::Tensor>& scale,
                     const std::optional<at::Tensor>& zero_point, const at::Tensor& input,
                     double max_norm, double norm_type) {
  const Table rows(table, scale, zero_point);
  const at::Tensor index = input.to(at::kLong).contiguous();
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  shape.push_back(rows.dim());
  at::Tensor out = at::empty(shape, at::dtype(at::kFloat));
  const int64_t* idx = index.data_ptr<int64_t>();
  float* o = out.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(rows.dim(), 1));
  at::parallel_for(0, index.numel(), grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* row = o + i * rows.dim();
      rows.row(checked_index(idx[i], rows.rows()), row);
      renormalize(row, rows.dim(), max_norm, norm_type);
    }
  });
  return out;
}

at::Tensor embedding_bag(const at::Tensor& table, const std::optional<at::Tensor>& scale,
                         const std::optional<at::Tensor>& zero_point, const at::Tensor& input,
                         const std::optional<at::Tensor>& offsets,
                         const std::optional<at::Tensor>& per_sample_weights, int64_t mode,
                         bool include_last_offset, int64_t padding_idx, double max_norm,
                         double norm_type) {
  TORCH_CHECK(mode >= 0 && mode <= 2, "mode is 0 (sum), 1 (mean) or 2 (max)");
  const Table rows(table, scale, zero_point);
  const at::Tensor index = input.to(at::kLong).contiguous();
  const std::vector<int64_t> starts = bag_starts(input, offsets, include_last_offset);
  const int64_t bags = static_cast<int64_t>(starts.size()) - 1, dim = rows.dim();
  at::Tensor weights;
  if (per_sample_weights.has_value() && per_sample_weights->defined()) {
    TORCH_CHECK(mode == 0, "embedding_bag: per_sample_weights only work with mode='sum'");
    TORCH_CHECK(per_sample_weights->sizes() == input.sizes(),
                "embedding_bag: per_sample_weights must have the input's shape");
    weights = per_sample_weights->to(at::kFloat).contiguous();
  }
  at::Tensor out = at::zeros({bags, dim}, at::dtype(at::kFloat));
  const int64_t* idx = index.data_ptr<int64_t>();
  const float* w = weights.defined() ? weights.data_ptr<float>() : nullptr;
  at::parallel_for(0, bags, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> row(static_cast<size_t>(dim));
    for (int64_t b = begin; b < end; ++b) {
      float* acc = out.data_ptr<float>() + b * dim;
      int64_t used = 0;
      for (int64_t i = starts[b]; i < starts[b + 1]; ++i) {
        if (idx[i] == padding_idx) continue;  // padding entries take no part, not even in mean
        rows.row(checked_index(idx[i], rows.rows()), row.data());
        renormalize(row.data(), dim, max_norm, norm_type);
        if (mode == 2) {
          for (int64_t j = 0; j < dim; ++j) acc[j] = used ? std::max(acc[j], row[j]) : row[j];
        } else if (w != nullptr) {
          for (int64_t j = 0; j < dim; ++j) acc[j] += w[i] * row[j];
        } else {
          for (int64_t j = 0; j < dim; ++j) acc[j] += row[j];
        }
        ++used;
      }
      if (mode == 1 && used > 0) {
        for (int64_t j = 0; j < dim; ++j) acc[j] /= static_cast<float>(used);
      }
    }
  });
  return out;
}

}  // namespace quantcore_native
