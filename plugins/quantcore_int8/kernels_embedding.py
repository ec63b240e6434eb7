"""Reference int8 kernels for embedding lookups: gather the int8 rows, dequantize only those
(per-row scale and zero point), then run torch's float lookup on them."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from quantcore import plugin
from quantcore.plugin import KernelRequest, QuantizedWeight


def _rows(weight: QuantizedWeight, index: torch.Tensor) -> torch.Tensor:
    """float32 values of rows ``index`` of a table quantized per row, per group of a row, or
    per tensor."""
    assert weight.scale is not None
    group_size = weight.spec.group_size if weight.spec else None
    if group_size is not None:
        flat = index.reshape(-1)
        zero_point = None if weight.zero_point is None else weight.zero_point[flat]
        rows = plugin.dequantize_affine(
            weight.data[flat], weight.scale[flat], zero_point, axis=0, group_size=group_size
        )
        return rows.reshape(*index.shape, -1)
    values = weight.data[index].to(torch.float32)
    per_row = weight.scale.dim() > 0
    if weight.zero_point is not None:
        zero_point = weight.zero_point[index].unsqueeze(-1) if per_row else weight.zero_point
        values = values - zero_point
    return values * (weight.scale[index].unsqueeze(-1) if per_row else weight.scale)


def supports_rows(request: KernelRequest) -> bool:
    """Rows can be dequantized independently: per-row or per-group (axis 0) or per-tensor
    parameters."""
    spec = request.weight.spec
    scale = request.weight.scale
    return scale is not None and (scale.dim() == 0 or (spec is not None and spec.axis % 2 == 0))


def _unique_rows(
    weight: QuantizedWeight, input: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dequantize each distinct index once: (rows, inverse indices, the distinct indices)."""
    unique, inverse = torch.unique(input, return_inverse=True)
    if unique.numel() == 0:  # empty input: one dummy row keeps torch's lookup well-defined
        return weight.data.new_zeros(1, weight.data.shape[1], dtype=torch.float32), inverse, unique
    return _rows(weight, unique), inverse, unique


def prepare_reference_embedding(request: KernelRequest) -> Callable[[torch.Tensor], torch.Tensor]:
    weight, options = request.weight, request.options
    dtype: torch.dtype = options["dtype"]
    max_norm, norm_type = options.get("max_norm"), options.get("norm_type", 2.0)

    def embedding(input: torch.Tensor) -> torch.Tensor:
        if max_norm is None:
            return _rows(weight, input).to(dtype)
        rows, inverse, _ = _unique_rows(weight, input)
        return F.embedding(inverse, rows, max_norm=max_norm, norm_type=norm_type).to(dtype)

    return embedding


def prepare_reference_embedding_bag(
    request: KernelRequest,
) -> Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]:
    weight, options = request.weight, request.options
    dtype: torch.dtype = options["dtype"]
    padding_idx: int | None = options.get("padding_idx")

    def embedding_bag(
        input: torch.Tensor, offsets: torch.Tensor | None, per_sample_weights: torch.Tensor | None
    ) -> torch.Tensor:
        rows, inverse, unique = _unique_rows(weight, input)
        pad = None
        if padding_idx is not None:
            hit = (unique == padding_idx).nonzero()
            pad = int(hit[0, 0]) if hit.numel() else None
        out = F.embedding_bag(
            inverse,
            rows,
            offsets,
            max_norm=options.get("max_norm"),
            norm_type=options.get("norm_type", 2.0),
            mode=options.get("mode", "mean"),
            per_sample_weights=None
            if per_sample_weights is None
            else per_sample_weights.to(rows.dtype),
            include_last_offset=options.get("include_last_offset", False),
            padding_idx=pad,
        )
        return out.to(dtype)

    return embedding_bag
