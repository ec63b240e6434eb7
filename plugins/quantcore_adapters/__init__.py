"""Built-in input adapters: a ``torch.nn.Module`` or a state dict (mapping of names to tensors)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn

import quantcore


def _is_module(obj: object) -> bool:
    return isinstance(obj, nn.Module)


def _adapt_module(obj: object) -> quantcore.AdaptedInput:
    assert isinstance(obj, nn.Module)
    return quantcore.AdaptedInput(module=obj, description=f"module {type(obj).__name__}")


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _adapt_state_dict(obj: object) -> quantcore.AdaptedInput:
    assert isinstance(obj, Mapping)
    return quantcore.AdaptedInput(state_dict=obj, description=f"state dict with {len(obj)} tensors")


@quantcore.hookimpl
def quantcore_input_adapters() -> Iterator[quantcore.InputAdapter]:
    yield quantcore.InputAdapter(
        name="module",
        accepts=_is_module,
        adapt=_adapt_module,
        priority=100,
        description="a torch.nn.Module",
    )
    yield quantcore.InputAdapter(
        name="state_dict",
        accepts=_is_state_dict,
        adapt=_adapt_state_dict,
        priority=90,
        description="a state dict: a mapping of str names to tensors",
    )
