"""Built-in layer mappers: which layers are quantized and what replaces them.

Mappers are format-agnostic: the scheme quantizes the weights, kernel backends registered for the
scheme's format run them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn

from quantcore import plugin
from quantcore.plugin import ConversionContext, QuantizedLinear, QuantizedModule
from quantcore_layers.attention import (
    QuantizedMultiheadAttention,
    attention_state_dict_layers,
    convert_attention_state_dict,
    convert_multihead_attention,
    is_multihead_attention,
)
from quantcore_layers.common import module_bias, module_tensor
from quantcore_layers.conv import (
    QuantizedConv,
    conv_state_dict_layers,
    convert_conv,
    convert_conv_state_dict,
    is_conv,
)
from quantcore_layers.embedding import (
    QuantizedEmbedding,
    QuantizedEmbeddingBag,
    convert_embedding,
    convert_embedding_bag,
    convert_embedding_state_dict,
    embedding_state_dict_layers,
    is_embedding,
    is_embedding_bag,
)
from quantcore_layers.recurrent import (
    QuantizedRNN,
    QuantizedRNNCell,
    convert_recurrent,
    convert_recurrent_state_dict,
    is_recurrent,
    recurrent_state_dict_layers,
)

__all__ = [
    "QuantizedConv",
    "QuantizedEmbedding",
    "QuantizedEmbeddingBag",
    "QuantizedMultiheadAttention",
    "QuantizedRNN",
    "QuantizedRNNCell",
]


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and not isinstance(module, QuantizedModule)


def convert_linear(module: nn.Module, ctx: ConversionContext) -> nn.Module:
    assert isinstance(module, nn.Linear)
    if type(module).forward is not nn.Linear.forward:
        ctx.note(f"{type(module).__name__} overrides forward; replaced by a plain quantized linear")
    weight = ctx.quantize_weight(module_tensor(module, "weight", ctx))
    bias = module_bias(module, "bias", ctx)
    return QuantizedLinear(
        module.in_features,
        module.out_features,
        weight,
        bias,
        ctx.spec.activation,
        ctx.kernel_candidates("linear"),
    )


# Embedding tables are 2-D "weight"s too; in a bare state dict only their names tell them apart.
_EMBEDDING_NAMES = ("wte", "wpe", "shared")


def looks_like_embedding(prefix: str) -> bool:
    last = prefix.rstrip(".").rpartition(".")[2].lower()
    return "embed" in last or last in _EMBEDDING_NAMES


def linear_state_dict_layers(state_dict: Mapping[str, torch.Tensor]) -> Iterator[str]:
    """Prefixes whose tensors look like a linear layer: a 2-D float ``weight`` and maybe a
    ``bias``, under a name that does not look like an embedding table (``embed_tokens``)."""
    for key, tensor in state_dict.items():
        if not key.endswith("weight") or (key != "weight" and not key.endswith(".weight")):
            continue
        if tensor.dim() != 2 or not tensor.is_floating_point():
            continue
        prefix = key[: -len("weight")]
        if looks_like_embedding(prefix):
            continue
        bias = state_dict.get(prefix + "bias")
        if bias is not None and tuple(bias.shape) != (tensor.shape[0],):
            continue
        yield prefix


def convert_linear_state_dict(
    prefix: str, tensors: Mapping[str, torch.Tensor], ctx: ConversionContext
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if "bias" in tensors:
        out["bias"] = ctx.clone(tensors["bias"])
    out.update(ctx.quantize_weight(tensors["weight"]).tensors("weight"))
    extra = sorted(set(tensors) - {"weight", "bias"})
    for key in extra:
        out[key] = ctx.clone(tensors[key])
    return out


def _is_normalization(module: nn.Module) -> bool:
    params = list(module.parameters(recurse=False))
    return "Norm" in type(module).__name__ and bool(params) and all(p.dim() <= 1 for p in params)


@plugin.hookimpl
def quantcore_layer_mappers() -> Iterator[plugin.LayerMapper]:
    yield plugin.LayerMapper(
        name="linear",
        layer_kind="linear",
        matches=_is_linear,
        convert=convert_linear,
        priority=plugin.Priority.BUILTIN,
        description="torch.nn.Linear and its subclasses",
        state_dict_layers=linear_state_dict_layers,
        convert_state_dict=convert_linear_state_dict,
    )
    yield plugin.LayerMapper(
        name="multihead_attention",
        layer_kind="attention",
        matches=is_multihead_attention,
        convert=convert_multihead_attention,
        state_dict_layers=attention_state_dict_layers,
        convert_state_dict=convert_attention_state_dict,
        priority=plugin.Priority.BUILTIN + 10,
        description="torch.nn.MultiheadAttention (packed or separate q/k/v, out_proj)",
    )
    yield plugin.LayerMapper(
        name="recurrent",
        layer_kind="recurrent",
        matches=is_recurrent,
        convert=convert_recurrent,
        state_dict_layers=recurrent_state_dict_layers,
        convert_state_dict=convert_recurrent_state_dict,
        priority=plugin.Priority.BUILTIN,
        description="torch.nn.LSTM, GRU, RNN and LSTMCell, GRUCell, RNNCell",
    )
    yield plugin.LayerMapper(
        name="embedding",
        layer_kind="embedding",
        matches=is_embedding,
        convert=convert_embedding,
        state_dict_layers=embedding_state_dict_layers,
        convert_state_dict=convert_embedding_state_dict,
        priority=plugin.Priority.BUILTIN,
        description="torch.nn.Embedding (weight-only)",
    )
    yield plugin.LayerMapper(
        name="embedding_bag",
        layer_kind="embedding_bag",
        matches=is_embedding_bag,
        convert=convert_embedding_bag,
        priority=plugin.Priority.BUILTIN,
        description="torch.nn.EmbeddingBag (weight-only; every mode)",
    )
    yield plugin.LayerMapper(
        name="conv",
        layer_kind="conv",
        matches=is_conv,
        convert=convert_conv,
        state_dict_layers=conv_state_dict_layers,
        convert_state_dict=convert_conv_state_dict,
        priority=plugin.Priority.BUILTIN,
        description="torch.nn.Conv1d, Conv2d, Conv3d",
    )
    yield plugin.LayerMapper(
        name="normalization",
        layer_kind="normalization",
        matches=_is_normalization,
        keep_reason="normalization layers stay in float: few parameters, sensitive to precision",
        priority=plugin.Priority.FALLBACK,
        description="LayerNorm, RMSNorm, BatchNorm, GroupNorm and similar *Norm layers",
    )
