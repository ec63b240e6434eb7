"""Where a quantized model's error comes from: :func:`compare` runs a float model and its
quantized copy on the same sample inputs and measures the error of every output and of every
quantized layer.

A layer's error is measured against the float layer *on the same input*: a forward hook on the
quantized layer calls the float layer with the arguments the quantized layer just received and
compares the two outputs at once, so each number is the error that layer adds by itself, and no
layer output is kept after it is compared (memory stays that of one forward pass). Cost: one float
forward, one quantized forward and one more call of every float layer that has a quantized twin.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quantcore.calibration import Batch, iter_batches, output_tensors
from quantcore.errors import AccuracyError

logger = logging.getLogger("quantcore")


@dataclass(frozen=True)
class ErrorStats:
    """Error of one output or one layer, over every call and batch measured.

    ``relative_l2`` is ``||y_q - y|| / ||y||`` and ``cosine`` the cosine similarity, both over all
    elements of all calls together; ``max_abs`` the largest ``|y_q - y|``.
    """

    name: str
    relative_l2: float
    cosine: float
    max_abs: float
    calls: int
    layer_type: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layer_type": self.layer_type,
            "relative_l2": _json_float(self.relative_l2),
            "cosine": _json_float(self.cosine),
            "max_abs": _json_float(self.max_abs),
            "calls": self.calls,
        }


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


@dataclass
class ErrorAccumulator:
    """Running sums from which relative L2 error and cosine follow, fed one tensor pair at a time."""

    name: str = ""
    layer_type: str = ""
    sq_diff: float = 0.0
    sq_ref: float = 0.0
    sq_out: float = 0.0
    dot: float = 0.0
    max_abs: float = 0.0
    calls: int = 0

    def add(self, reference: torch.Tensor, output: torch.Tensor) -> None:
        if reference.shape != output.shape:
            raise AccuracyError(
                f"{self.name or 'output'}: the quantized model gives shape {tuple(output.shape)} "
                f"where the float model gives {tuple(reference.shape)}; compare a quantized copy "
                "with the float model it was made from"
            )
        ref = reference.detach().reshape(-1).float()
        out = output.detach().reshape(-1).float()
        diff = out - ref
        self.sq_diff += float(torch.dot(diff, diff))
        self.sq_ref += float(torch.dot(ref, ref))
        self.sq_out += float(torch.dot(out, out))
        self.dot += float(torch.dot(ref, out))
        if diff.numel():
            self.max_abs = max(self.max_abs, float(diff.abs().max()))

    def add_outputs(self, reference: object, output: object) -> None:
        """Add every floating-point tensor of two outputs of the same structure."""
        refs, outs = list(output_tensors(reference)), list(output_tensors(output))
        if [n for n, _ in refs] != [n for n, _ in outs]:
            raise AccuracyError(
                f"{self.name or 'output'}: the two models return different structures "
                f"({[n for n, _ in refs][:6]} vs {[n for n, _ in outs][:6]}); compare a quantized "
                "copy with the float model it was made from"
            )
        for (_, ref), (_, out) in zip(refs, outs, strict=True):
            self.add(ref, out)
        self.calls += 1

    @property
    def relative_l2(self) -> float:
        if self.sq_ref == 0.0:
            return 0.0 if self.sq_diff == 0.0 else math.inf
        return math.sqrt(self.sq_diff / self.sq_ref)

    @property
    def cosine(self) -> float:
        if self.sq_ref == 0.0 and self.sq_out == 0.0:
            return 1.0
        if self.sq_ref == 0.0 or self.sq_out == 0.0:
            return 0.0
        return self.dot / math.sqrt(self.sq_ref * self.sq_out)

    def stats(self) -> ErrorStats:
        return ErrorStats(
            self.name, self.relative_l2, self.cosine, self.max_abs, self.calls, self.layer_type
        )


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare` measured: per output and per quantized layer (in model order)."""

    outputs: tuple[ErrorStats, ...]
    layers: tuple[ErrorStats, ...]
    batches: int

    def worst(self, n: int = 10) -> tuple[ErrorStats, ...]:
        """The ``n`` layers with the largest relative L2 error, largest first."""
        ranked = sorted(self.layers, key=lambda s: (-_sortable(s.relative_l2), s.name))
        return tuple(ranked[:n])

    def to_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "outputs": [s.to_dict() for s in self.outputs],
            "layers": [s.to_dict() for s in self.layers],
        }

    def table(self, top: int | None = 10) -> str:
        """Outputs first, then the ``top`` worst layers (every layer when None)."""
        lines = [f"quantcore compare: {self.batches} batch(es)"]
        lines += _rows("output", self.outputs)
        shown = self.worst(len(self.layers) if top is None else top)
        title = "layer" if top is None or top >= len(self.layers) else f"worst {len(shown)} layers"
        lines += _rows(f"{title} (of {len(self.layers)})", shown)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _sortable(value: float) -> float:
    return math.inf if math.isnan(value) else value


def _rows(title: str, stats: Sequence[ErrorStats]) -> list[str]:
    if not stats:
        return [f"  {title}: none"]
    width = min(56, max(len(s.name) for s in stats))
    lines = [f"  {title:<{width}}  {'rel. L2':>9}  {'cosine':>9}  {'max abs':>9}  type"]
    for s in stats:
        lines.append(
            f"  {s.name or '<root>':<{width}}  {s.relative_l2:>9.5f}  {s.cosine:>9.6f}  "
            f"{s.max_abs:>9.3g}  {s.layer_type}"
        )
    return lines


def quantized_layer_names(float_model: nn.Module, quantized: nn.Module) -> list[str]:
    """Names of the quantized copy's layers that replace a float layer: the layers its manifest
    records (quantize() and load() attach one), else those whose type differs from the float
    model's module of the same name."""
    from quantcore.api import manifest_of

    float_modules = dict(float_model.named_modules())
    manifest = manifest_of(quantized)
    if manifest is not None:
        names = [record.name for record in manifest.layers]
    else:
        names = [
            name
            for name, module in quantized.named_modules()
            if name in float_modules and type(module) is not type(float_modules[name])
        ]
    missing = [n for n in names if n not in float_modules]
    if missing:
        raise AccuracyError(
            f"the float model has no layer {missing[0]!r} that the quantized model has; compare a "
            "quantized copy with the float model it was made from"
        )
    return names


LayerHook = Callable[[str, nn.Module, tuple[Any, ...], dict[str, Any], Any], Any]


@contextmanager
def layer_hooks(model: nn.Module, names: Sequence[str], hook: LayerHook) -> Iterator[None]:
    """Call ``hook(name, module, args, kwargs, output)`` after each named layer of ``model`` runs;
    a hook's non-None return replaces the layer's output. Removed on exit."""
    handles = []
    try:
        for name in names:
            module = model.get_submodule(name)

            def run(
                module: nn.Module,
                args: tuple[Any, ...],
                kwargs: dict[str, Any],
                output: Any,
                name: str = name,
            ) -> Any:
                return hook(name, module, args, kwargs, output)

            handles.append(module.register_forward_hook(run, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class _LayerProbe:
    """Measures each quantized layer against its float twin on the quantized layer's input."""

    float_model: nn.Module
    accumulators: dict[str, ErrorAccumulator] = field(default_factory=dict)

    def __call__(
        self, name: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> None:
        reference = self.float_model.get_submodule(name)(*args, **kwargs)
        self.accumulators[name].add_outputs(reference, out)


def compare(
    float_model: nn.Module,
    quantized: object,
    inputs: object,
    *,
    layers: bool = True,
) -> Comparison:
    """Run ``float_model`` and ``quantized`` on ``inputs`` and measure the error of each output
    and (``layers=True``) of each quantized layer against the float layer on the same input.

    Args:
        float_model: the model that was quantized. Only run, never changed.
        quantized: the :class:`~quantcore.QuantizationResult` or the quantized module.
        inputs: a tensor, a tuple of positional arguments or a dict of keyword arguments (one
            batch), or a list/iterable of those (one per batch); see docs/accuracy.md.
        layers: measure every quantized layer (costs about one more float forward pass).

    Both models run as they are (their train/eval mode untouched) under ``torch.no_grad()``.
    """
    module = getattr(quantized, "module", quantized)
    if not isinstance(module, nn.Module) or not isinstance(float_model, nn.Module):
        raise AccuracyError(
            "compare(float_model, quantized, inputs) needs two modules: the float model and its "
            "quantized copy (or the QuantizationResult)"
        )
    if float_model.training:
        logger.warning(
            "compare: the float model is in training mode (dropout, batch statistics); call "
            ".eval() on it for comparable outputs"
        )
    names = quantized_layer_names(float_model, module) if layers else []
    probe = _LayerProbe(float_model)
    for name in names:
        probe.accumulators[name] = ErrorAccumulator(name, type(module.get_submodule(name)).__name__)
    outputs: dict[str, ErrorAccumulator] = {}
    batches = 0
    with torch.no_grad(), layer_hooks(module, names, probe):
        for batch in iter_batches(inputs):
            _compare_outputs(float_model, module, batch, outputs)
            batches += 1
    if batches == 0:
        raise AccuracyError("compare() got no batch of sample inputs (an empty list or iterable)")
    return Comparison(
        tuple(a.stats() for a in outputs.values()),
        tuple(probe.accumulators[n].stats() for n in names),
        batches,
    )


def _compare_outputs(
    float_model: nn.Module,
    quantized: nn.Module,
    batch: Batch,
    outputs: dict[str, ErrorAccumulator],
) -> None:
    reference = dict(output_tensors(batch(float_model)))
    produced = dict(output_tensors(batch(quantized)))
    if list(reference) != list(produced):
        raise AccuracyError(
            f"the two models return different outputs ({list(reference)[:6]} vs "
            f"{list(produced)[:6]}); compare a quantized copy with the float model it was made from"
        )
    for name, tensor in reference.items():
        accumulator = outputs.setdefault(name, ErrorAccumulator(name))
        accumulator.add(tensor, produced[name])
        accumulator.calls += 1
