"""The module adapter: an ``nn.Module`` (a ``torch.fx.GraphModule`` too), unwrapping the
containers that only add behaviour around a model (DataParallel, DistributedDataParallel,
``torch.compile``), and saying so in the report."""

from __future__ import annotations

import torch.fx
from torch import nn

from quantcore import plugin


def _wrapped(module: nn.Module) -> tuple[nn.Module, str] | None:
    if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        inner = module.module
        return (
            inner,
            f"unwrapped {type(module).__name__}: quantized its .module ({type(inner).__name__})",
        )
    inner = getattr(module, "_orig_mod", None)  # torch.compile's OptimizedModule
    if isinstance(inner, nn.Module) and type(module).__name__ == "OptimizedModule":
        return inner, f"unwrapped torch.compile: quantized the original {type(inner).__name__}"
    return None


def unwrap(module: nn.Module) -> tuple[nn.Module, tuple[str, ...]]:
    """The model inside any wrappers, and one note per wrapper removed."""
    notes: list[str] = []
    while (found := _wrapped(module)) is not None:
        module, note = found
        notes.append(note)
    return module, tuple(notes)


def is_module(obj: object) -> bool:
    return isinstance(obj, nn.Module)


def adapt_module(obj: object) -> plugin.AdaptedInput:
    assert isinstance(obj, nn.Module)
    module, notes = unwrap(obj)
    kind = type(module).__name__
    if isinstance(module, torch.fx.GraphModule):
        kind = f"GraphModule (torch.fx trace of {kind})"
    return plugin.AdaptedInput(module=module, description=f"module {kind}", notes=notes)
