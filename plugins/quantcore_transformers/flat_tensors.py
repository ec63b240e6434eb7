"""transformers' loading of the tensors a quantcore folder stores flat (``hf_models.stored_flat``).

transformers checks every tensor's shape against the model's as it assigns it, and model code may
read a layer's ``weight`` before loading ends (GPT-2's initialization reads ``c_proj.weight``): a
flat tensor is viewed to its layer's shape as it is read, by a weight converter (one per tensor,
named exactly). Saving reverses it: the tensor is written flat again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers.core_model_loading import ConversionOps, WeightConverter


class _View(ConversionOps):
    """The tensor named ``key``, viewed to ``shape`` (or flat, for saving)."""

    def __init__(self, key: str, shape: torch.Size | None) -> None:
        self.key = key
        self.shape = shape

    def convert(self, input_dict: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        name = kwargs.get("full_layer_name")
        if name != self.key or len(input_dict) != 1:  # a longer name that ends like this one
            return input_dict
        value = next(iter(input_dict.values()))
        tensor = value[0] if isinstance(value, list) else value
        if self.shape is None:
            return {name: tensor.reshape(-1)}
        if tensor.numel() != self.shape.numel():
            return {name: tensor}  # transformers reports the size mismatch and stops
        return {name: tensor.view(self.shape)}

    @property
    def reverse_op(self) -> ConversionOps:
        return _View(self.key, None)


def converters(shapes: Mapping[str, torch.Size]) -> list[WeightConverter]:
    """One converter per flat tensor: its full name is its pattern (a name is a valid pattern:
    dots match themselves among module names)."""
    return [WeightConverter(key, key, [_View(key, shape)]) for key, shape in shapes.items()]
