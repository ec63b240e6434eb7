// Lookups in quantized tables: int8 rows with a scale and an optional zero point per row (or one
// for the table), or float16 rows. Each looked-up row is dequantized as the reference does,
// ((float(q) - zero) * scale, or the float16 value widened), in the same pass that writes or
// reduces it: no dequantized copy of the rows of a call.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace quantcore_native {

// table[input] as float32 [*input.shape, dim]; max_norm >= 0: rows whose norm_type-norm exceeds it
// are scaled by max_norm / (norm + 1e-7), as torch's max_norm does (the table is not modified)
at::Tensor embedding(const at::Tensor& table, const std::optional<at::Tensor>& scale,
                     const std::optional<at::Tensor>& zero_point, const at::Tensor& input,
                     double max_norm, double norm_type);

// torch.nn.functional.embedding_bag (mode 0 sum, 1 mean, 2 max) over the table's dequantized
// rows, float32 [bags, dim]; padding_idx < 0: none.
at::Tensor embedding_bag(const at::Tensor& table, const std::optional<at::Tensor>& scale,
                         const std::optional<at::Tensor>& zero_point, const at::Tensor& input,
                         const std::optional<at::Tensor>& offsets,
                         const std::optional<at::Tensor>& per_sample_weights, int64_t mode,
                         bool include_last_offset, int64_t padding_idx, double max_norm,
                         double norm_type);

}  // namespace quantcore_native
