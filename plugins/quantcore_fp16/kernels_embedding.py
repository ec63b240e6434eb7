"""Reference fp16 kernels for embedding lookups: gather the float16 rows, upcast them to the
layer's dtype, run torch's float lookup on them."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from quantcore.plugin import KernelRequest


def prepare_reference_embedding(request: KernelRequest) -> Callable[[torch.Tensor], torch.Tensor]:
    table, options = request.weight.data, request.options
    dtype: torch.dtype = options["dtype"]
    max_norm, norm_type = options.get("max_norm"), options.get("norm_type", 2.0)

    def embedding(input: torch.Tensor) -> torch.Tensor:
        if max_norm is None:
            return table[input].to(dtype)
        unique, inverse = torch.unique(input, return_inverse=True)
        rows = table[unique].to(dtype)
        return F.embedding(inverse, rows, max_norm=max_norm, norm_type=norm_type)

    return embedding


def prepare_reference_embedding_bag(
    request: KernelRequest,
) -> Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]:
    table, options = request.weight.data, request.options
    dtype: torch.dtype = options["dtype"]
    padding_idx: int | None = options.get("padding_idx")

    def embedding_bag(
        input: torch.Tensor, offsets: torch.Tensor | None, per_sample_weights: torch.Tensor | None
    ) -> torch.Tensor:
        unique, inverse = torch.unique(input, return_inverse=True)
        rows = (
            table[unique].to(dtype)
            if unique.numel()
            else table.new_zeros(1, table.shape[1], dtype=dtype)
        )
        pad = None
        if padding_idx is not None:
            hit = (unique == padding_idx).nonzero()
            pad = int(hit[0, 0]) if hit.numel() else None
        return F.embedding_bag(
            inverse,
            rows,
            offsets,
            max_norm=options.get("max_norm"),
            norm_type=options.get("norm_type", 2.0),
            mode=options.get("mode", "mean"),
            per_sample_weights=None if per_sample_weights is None else per_sample_weights.to(dtype),
            include_last_offset=options.get("include_last_offset", False),
            padding_idx=pad,
        )

    return embedding_bag
