"""Sample inputs, as the caller gives them: how they are split into batches, how a model is called
on one, and which tensors of its output are compared.

Shared by :func:`quantcore.compare` and the accuracy budget of :func:`quantcore.quantize`, so both
read the caller's inputs the same way.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quantcore.errors import AccuracyError


@dataclass(frozen=True)
class Batch:
    """One call of the model: ``model(*args, **kwargs)``."""

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, model: nn.Module) -> Any:
        return model(*self.args, **self.kwargs)


def _as_batch(item: object) -> Batch:
    if isinstance(item, Batch):
        return item
    if isinstance(item, Mapping):
        return Batch(kwargs=dict(item))
    if isinstance(item, (tuple, list)):
        return Batch(args=tuple(item))
    return Batch(args=(item,))


def iter_batches(inputs: object) -> Iterator[Batch]:
    """The batches of ``inputs``.

    One batch: a tensor (the model's only argument), a tuple (its positional arguments), a mapping
    (its keyword arguments) or a :class:`Batch`. Several: a list or any other iterable (a
    generator, a DataLoader) whose items are each one of those.
    """
    if isinstance(inputs, (torch.Tensor, tuple, Mapping, Batch)):
        yield _as_batch(inputs)
        return
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Iterable):
        raise AccuracyError(
            f"sample inputs must be a tensor, a tuple of positional arguments, a dict of keyword "
            f"arguments, or a list/iterable of those (one per batch), not "
            f"{type(inputs).__name__}"
        )
    for item in inputs:
        yield _as_batch(item)


def load_inputs(path: str | os.PathLike[str]) -> list[Batch]:
    """Batches from a file written with ``torch.save``: a tensor, a tuple or dict (one batch), or a
    list of those (one per batch). Read with ``weights_only=True``: no code in it runs."""
    try:
        data = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AccuracyError(f"sample input file {os.fspath(path)!r} does not exist") from None
    except Exception as exc:
        raise AccuracyError(
            f"cannot read sample inputs from {os.fspath(path)!r} ({type(exc).__name__}: {exc}); "
            "write them with torch.save(tensor | tuple | dict | [batches...], path)"
        ) from None
    batches = list(iter_batches(data))
    if not batches:
        raise AccuracyError(f"sample input file {os.fspath(path)!r} holds no batch")
    return batches


def output_tensors(output: object, prefix: str = "output") -> Iterator[tuple[str, torch.Tensor]]:
    """Every floating-point tensor in a model's output, with a name saying where it sits
    (``output``, ``output[0]``, ``output.logits``); other values are not compared."""
    if isinstance(output, torch.Tensor):
        if output.is_floating_point() or output.is_complex():
            yield prefix, output
    elif isinstance(output, Mapping):  # dicts, Hugging Face ModelOutput
        for key, value in output.items():
            yield from output_tensors(value, f"{prefix}.{key}")
    elif isinstance(output, (tuple, list)):  # PackedSequence is a tuple too
        for i, value in enumerate(output):
            yield from output_tensors(value, f"{prefix}[{i}]")
    elif dataclasses.is_dataclass(output) and not isinstance(output, type):
        for f in dataclasses.fields(output):
            yield from output_tensors(getattr(output, f.name), f"{prefix}.{f.name}")
