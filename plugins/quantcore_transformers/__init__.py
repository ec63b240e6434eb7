"""Hugging Face transformers support: a layer mapper for transformers' ``Conv1D``, an input
adapter that makes quantized ``PreTrainedModel``s save with ``save_pretrained`` (``hf_models``),
and quantcore as a transformers quantization method (``hf_quantizer``, activated through the
``quantcore.integrations`` entry point when transformers loads its quantizers).

GPT-2 and its relatives keep their linear layers in ``transformers.pytorch_utils.Conv1D``: a linear
layer whose weight is stored transposed, ``[in_features, out_features]``; it becomes quantcore's
QuantizedLinear, as an ``nn.Linear`` does. This plugin registers its
mapper only when transformers is installed, and never imports transformers itself: a model that
holds a Conv1D has imported it already, so the class is recognized by name and module.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import torch
from torch import nn

from quantcore import plugin
from quantcore.plugin import ConversionContext, QuantizedLinear
from quantcore_transformers import conv1d_tensors, hf_folders, hf_models

_CONV1D = ("transformers.pytorch_utils", "Conv1D")


def transformers_available() -> bool:
    return importlib.util.find_spec("transformers") is not None


def _conv1d_class(module: nn.Module) -> type[nn.Module] | None:
    for cls in type(module).__mro__:
        if (cls.__module__, cls.__name__) == _CONV1D:
            return cls
    return None


def is_hf_conv1d(module: nn.Module) -> bool:
    return _conv1d_class(module) is not None


def convert_hf_conv1d(module: nn.Module, ctx: ConversionContext) -> nn.Module:
    """A QuantizedLinear: Conv1D computes ``x @ W + b`` with ``W`` stored ``[in, out]``, which is
    a linear layer with weight ``W.T`` (quantized from a view: nothing is copied)."""
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise plugin.LayerSkipped("Conv1D weight is not a 2-D tensor")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise plugin.LayerSkipped("Conv1D bias is not a tensor")
    cls = _conv1d_class(module)
    if cls is not None and type(module).forward is not cls.forward:
        ctx.note(f"{type(module).__name__} overrides forward; replaced by a quantized linear")
    in_features, out_features = weight.shape
    return QuantizedLinear(
        in_features,
        out_features,
        ctx.quantize_weight(weight.detach().t()),
        None if bias is None else ctx.clone(bias),
        ctx.spec.activation,
        ctx.kernel_candidates("linear"),
    )


@plugin.hookimpl
def quantcore_layer_mappers() -> Iterator[plugin.LayerMapper]:
    if not transformers_available():
        return
    yield plugin.LayerMapper(
        name="hf_conv1d",
        layer_kind="linear",
        matches=is_hf_conv1d,
        convert=convert_hf_conv1d,
        priority=plugin.Priority.BUILTIN,
        description="transformers.pytorch_utils.Conv1D (GPT-2 family), as a linear layer",
        state_dict_layers=conv1d_tensors.conv1d_state_dict_layers,
        convert_state_dict=conv1d_tensors.convert_conv1d_state_dict,
    )
    yield plugin.LayerMapper(
        name="hf_conv1d_undecided",
        layer_kind="linear",
        matches=lambda module: False,  # state dicts only: a module says what it is
        keep_reason="square GPT-2-style weights whose layout the tensors do not tell",
        priority=100,
        description="GPT-2-style c_attn/c_proj/c_fc tensors of unknown layout (kept float)",
        state_dict_layers=conv1d_tensors.undecided_state_dict_layers,
        convert_state_dict=conv1d_tensors.refuse_undecided,
    )


@plugin.hookimpl
def quantcore_input_adapters() -> Iterator[plugin.InputAdapter]:
    yield plugin.InputAdapter(
        name="transformers",
        accepts=hf_models.accepts,
        adapt=hf_models.adapt,
        priority=110,
        description="a module holding a transformers PreTrainedModel (its copy saves with "
        "save_pretrained)",
    )
    yield plugin.InputAdapter(
        name="transformers-folder",
        accepts=hf_folders.accepts,
        adapt=hf_folders.adapt,
        priority=75,
        description="a Hugging Face model folder (config.json + checkpoint)",
    )
