"""GPT-2's ``Conv1D`` layers in a bare state dict (a checkpoint file quantized without the model).

A ``Conv1D`` weight is ``[in, out]``, a linear weight ``[out, in]``: from names and shapes alone
a square one looks like either. The GPT-2 family names them ``c_attn`` / ``c_proj`` / ``c_fc`` /
``q_attn``; a non-square one whose bias matches its *second* dimension proves the layout for the
whole state dict (GPTBigCode uses the same names with ``nn.Linear``: its biases match the first).
Without such evidence they are claimed and skipped (kept float), never quantized transposed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from quantcore import plugin

_NAMES = ("c_attn", "c_proj", "c_fc", "q_attn")


def _candidates(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        prefix, _, last = key.rpartition(".")
        if last != "weight" or prefix.rpartition(".")[2] not in _NAMES:
            continue
        if tensor.dim() == 2 and tensor.is_floating_point():
            found[prefix + "."] = tensor
    return found


def layout(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """ "conv1d" or "linear" when a non-square candidate's bias decides it, else None."""
    for prefix, weight in _candidates(state_dict).items():
        bias = state_dict.get(prefix + "bias")
        if bias is None or bias.dim() != 1 or weight.shape[0] == weight.shape[1]:
            continue
        if bias.shape[0] == weight.shape[1]:
            return "conv1d"
        if bias.shape[0] == weight.shape[0]:
            return "linear"
    return None


def conv1d_state_dict_layers(state_dict: Mapping[str, torch.Tensor]) -> Iterator[str]:
    if layout(state_dict) == "conv1d":
        yield from _candidates(state_dict)


def undecided_state_dict_layers(state_dict: Mapping[str, torch.Tensor]) -> Iterator[str]:
    """Square candidates when nothing in the state dict tells the layout: kept float."""
    if layout(state_dict) is None:
        for prefix, weight in _candidates(state_dict).items():
            if weight.shape[0] == weight.shape[1]:
                yield prefix


def refuse_undecided(
    prefix: str, tensors: Mapping[str, torch.Tensor], ctx: plugin.ConversionContext
) -> dict[str, torch.Tensor]:
    raise plugin.LayerSkipped(
        "a square GPT-2-style weight: the tensors alone do not tell Conv1D [in, out] from "
        "Linear [out, in]; quantize the model (or a checkpoint holding its c_attn / c_fc too)"
    )


def convert_conv1d_state_dict(
    prefix: str, tensors: Mapping[str, torch.Tensor], ctx: plugin.ConversionContext
) -> dict[str, torch.Tensor]:
    """The tensors a quantized ``Conv1D`` (a quantized linear of ``weight.T``) holds."""
    weight = tensors["weight"]
    bias = tensors.get("bias")
    if bias is not None and bias.shape[0] != weight.shape[1]:
        raise plugin.LayerSkipped("bias does not match a Conv1D weight [in, out]")
    out: dict[str, torch.Tensor] = {}
    if bias is not None:
        out["bias"] = ctx.clone(bias)
    out.update(ctx.quantize_weight(weight.t()).tensors("weight"))
    for key in sorted(set(tensors) - {"weight", "bias"}):
        out[key] = ctx.clone(tensors[key])
    return out
