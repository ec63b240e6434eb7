"""nn.Embedding and nn.EmbeddingBag: weight-only quantization of the table, rows looked up and
dequantized by the scheme's "embedding" / "embedding_bag" kernels.

``max_norm`` renormalizes looked-up rows of the float table in place in torch; the quantized
table is read-only, so the kernels renormalize the dequantized rows at every lookup instead,
which gives the outputs torch gives (a renormalized row keeps its norm on later lookups).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn

from quantcore.plugin import (
    ConversionContext,
    DtypeTrackingModule,
    KernelBackend,
    KernelRequest,
    QuantizedModule,
    QuantizedWeight,
    kernel_request,
    register_weight,
)
from quantcore_layers.common import module_tensor, refuse_overridden_forward


class _QuantizedTable(DtypeTrackingModule):
    """What both lookups keep of the float module: the table's shape, padding and max_norm
    settings, its dtype (the output's), and the quantized table itself."""

    def __init__(
        self,
        op: str,
        source: nn.Embedding | nn.EmbeddingBag,
        weight: QuantizedWeight,
        backends: tuple[KernelBackend, ...],
    ) -> None:
        super().__init__(op, backends)
        self.num_embeddings = source.num_embeddings
        self.embedding_dim = source.embedding_dim
        self.padding_idx = source.padding_idx
        self.max_norm = source.max_norm
        self.norm_type = source.norm_type
        self.output_dtype = source.weight.dtype
        self.weight_format = weight.format
        self.weight_spec = weight.spec
        register_weight(self, weight)


class QuantizedEmbedding(_QuantizedTable):
    """Drop-in for nn.Embedding; returns the original table's dtype."""

    def __init__(
        self, source: nn.Embedding, weight: QuantizedWeight, backends: tuple[KernelBackend, ...]
    ) -> None:
        super().__init__("embedding", source, weight, backends)
        self._prepare_kernel()

    def _kernel_request(self) -> KernelRequest:
        return kernel_request(
            self,
            "embedding",
            max_norm=self.max_norm,
            norm_type=self.norm_type,
            dtype=self.output_dtype,
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._call_kernel(input)

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, format={self.weight_format}, "
            f"kernel={self.kernel_name}"
        )


class QuantizedEmbeddingBag(_QuantizedTable):
    """Drop-in for nn.EmbeddingBag (every mode, offsets, per_sample_weights, padding_idx)."""

    def __init__(
        self, source: nn.EmbeddingBag, weight: QuantizedWeight, backends: tuple[KernelBackend, ...]
    ) -> None:
        super().__init__("embedding_bag", source, weight, backends)
        self.mode = source.mode
        self.include_last_offset = source.include_last_offset
        self._prepare_kernel()

    def _kernel_request(self) -> KernelRequest:
        return kernel_request(
            self,
            "embedding_bag",
            max_norm=self.max_norm,
            norm_type=self.norm_type,
            mode=self.mode,
            include_last_offset=self.include_last_offset,
            padding_idx=self.padding_idx,
            dtype=self.output_dtype,
        )

    def forward(
        self,
        input: torch.Tensor,
        offsets: torch.Tensor | None = None,
        per_sample_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self._call_kernel(input, offsets, per_sample_weights)

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode!r}, "
            f"format={self.weight_format}, kernel={self.kernel_name}"
        )


def is_embedding(module: nn.Module) -> bool:
    return isinstance(module, nn.Embedding) and not isinstance(module, QuantizedModule)


def is_embedding_bag(module: nn.Module) -> bool:
    return isinstance(module, nn.EmbeddingBag) and not isinstance(module, QuantizedModule)


def convert_embedding(module: nn.Module, ctx: ConversionContext) -> nn.Module:
    assert isinstance(module, nn.Embedding)
    refuse_overridden_forward(module, nn.Embedding)
    if module.max_norm is not None:
        ctx.note("max_norm: dequantized rows are renormalized at each lookup (table not modified)")
    weight = ctx.quantize_weight(module_tensor(module, "weight", ctx))
    return QuantizedEmbedding(module, weight, ctx.kernel_candidates("embedding"))


def convert_embedding_bag(module: nn.Module, ctx: ConversionContext) -> nn.Module:
    assert isinstance(module, nn.EmbeddingBag)
    refuse_overridden_forward(module, nn.EmbeddingBag)
    if module.max_norm is not None:
        ctx.note("max_norm: dequantized rows are renormalized at each lookup (table not modified)")
    weight = ctx.quantize_weight(module_tensor(module, "weight", ctx))
    return QuantizedEmbeddingBag(module, weight, ctx.kernel_candidates("embedding_bag"))


def embedding_state_dict_layers(state_dict: Mapping[str, torch.Tensor]) -> Iterator[str]:
    """Prefixes of a 2-D float ``weight`` under an embedding-like name (``embed_tokens``, ``wte``):
    a table and a linear weight look the same, so the name decides, as for the linear mapper."""
    from quantcore_layers import looks_like_embedding

    for key, tensor in state_dict.items():
        if key != "weight" and not key.endswith(".weight"):
            continue
        prefix = key[: -len("weight")]
        if tensor.dim() == 2 and tensor.is_floating_point() and looks_like_embedding(prefix):
            yield prefix


def convert_embedding_state_dict(
    prefix: str, tensors: Mapping[str, torch.Tensor], ctx: ConversionContext
) -> dict[str, torch.Tensor]:
    out = dict(ctx.quantize_weight(tensors["weight"]).tensors("weight"))
    for key in sorted(set(tensors) - {"weight"}):
        out[key] = ctx.clone(tensors[key])
    return out
