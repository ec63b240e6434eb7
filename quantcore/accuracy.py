"""quantize() with calibration inputs: measure the output error, keep the most sensitive layers back
until an accuracy budget holds, and optionally smooth activation outliers first.

Everything here is orchestration over ordinary quantize() calls: the layers kept back become
per-layer overrides (``skip``, or ``dtype=<fallback>``) of one last quantize() call, so the
result, its report and its saved file are those of a normal call. No number format is named.

The search (docs/accuracy.md), with N the layers quantized and B the calibration batches:

1. B float passes for the reference outputs, B passes with every layer quantized;
2. N x B passes for the sensitivities: the output error with only that layer quantized;
3. a binary search over k, the number of most sensitive layers kept back: about log2(N) x B;
4. a pruning pass, one try per kept layer, re-quantizing those the budget does not need;
5. B passes to measure the returned model.

Every pass runs the quantized model; a layer kept back runs its twin in a forward hook (so a
kept-back layer costs its quantized and its float call in the search); ties in sensitivity go to
model order, so the same inputs give the same result.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from quantcore.calibration import Batch, iter_batches
from quantcore.compare import ErrorAccumulator, layer_hooks
from quantcore.config import Override, QuantizeConfig
from quantcore.errors import AccuracyError
from quantcore.plugin_manager import QuantcorePluginManager, create_plugin_manager
from quantcore.report import AccuracyReport, KeptForAccuracy, LayerReport

if TYPE_CHECKING:
    from quantcore.api import QuantizationResult
    from quantcore.convert import Progress

logger = logging.getLogger("quantcore")

BUDGET_SOURCE = "accuracy budget"


class ErrorMeter:
    """The output error of a model on the calibration batches, against stored float outputs."""

    def __init__(self, metric: str | Callable[[Any, Any], float], batches: Sequence[Batch]):
        self.metric = metric
        self.batches = batches
        self.references: list[Any] = []
        self.passes = 0

    @property
    def name(self) -> str:
        if callable(self.metric):
            return getattr(self.metric, "__qualname__", "custom metric")
        return "1 - cosine" if self.metric == "cosine" else "relative L2"

    def record_references(self, model: nn.Module) -> None:
        with torch.no_grad():
            self.references = [batch(model) for batch in self.batches]
        self.passes += len(self.batches)

    def error(self, model: nn.Module) -> float:
        accumulator = ErrorAccumulator("output")
        scores: list[float] = []
        with torch.no_grad():
            for batch, reference in zip(self.batches, self.references, strict=True):
                output = batch(model)
                if callable(self.metric):
                    scores.append(float(self.metric(reference, output)))
                else:
                    accumulator.add_outputs(reference, output)
        self.passes += len(self.batches)
        if callable(self.metric):
            return sum(scores) / len(scores)
        if self.metric == "cosine":
            return 1.0 - accumulator.cosine
        return accumulator.relative_l2


class MixedModel:
    """The quantized model with any set of its layers kept back: a forward hook on each such
    layer returns what the kept-back model's layer (float, or the fallback scheme) gives for the
    same input. The quantized model is always the one that runs, since a float model may take
    other paths (torch's fused float encoder hands nested tensors to its layers)."""

    def __init__(
        self, quantized: nn.Module, kept: nn.Module, names: Sequence[str], meter: ErrorMeter
    ):
        self.quantized, self.kept, self.names, self.meter = quantized, kept, names, meter

    def error(self, kept_back: frozenset[str]) -> float:
        def swap(name: str, module: nn.Module, args: Any, kwargs: Any, output: Any) -> Any:
            return self.kept.get_submodule(name)(*args, **kwargs)

        with layer_hooks(self.quantized, sorted(kept_back), swap):
            return self.meter.error(self.quantized)


def _search(mixed: MixedModel, max_error: float, sensitivity: dict[str, float]) -> list[str]:
    """The fewest most-sensitive layers to keep back: binary search on the count, then drop
    every kept layer the budget does not need (least sensitive first)."""
    ranked = sorted(mixed.names, key=lambda n: (-sensitivity[n], mixed.names.index(n)))
    if mixed.error(frozenset(ranked)) > max_error:
        return ranked  # not even all of them: the caller reports the budget as not met
    low, high = 1, len(ranked)  # the top `high` layers meet the budget
    while low < high:
        middle = (low + high) // 2
        if mixed.error(frozenset(ranked[:middle])) <= max_error:
            high = middle
        else:
            low = middle + 1
    kept = ranked[:high]
    for name in reversed(ranked[:high]):
        trial = frozenset(n for n in kept if n != name)
        if mixed.error(trial) <= max_error:
            kept = [n for n in kept if n != name]
    return kept


def _exact(name: str) -> str:
    return "re:" + re.escape(name)


def _inner_config(config: QuantizeConfig, extra: Sequence[Override] = ()) -> QuantizeConfig:
    """The configuration of the plain quantize() calls made here: no accuracy settings."""
    return dataclasses.replace(
        config, max_error=None, smooth=False, overrides=(*config.overrides, *extra)
    )


def _check_inputs(obj: object, calibration: object, config: QuantizeConfig) -> list[Batch]:
    wanted = "max_error" if config.max_error is not None else "smooth"
    if calibration is None:
        raise AccuracyError(
            f"{wanted} ({config.source(wanted)}) needs calibration inputs: pass calibration=... "
            "(CLI: --calibration FILE), or drop it"
        )
    if not isinstance(obj, nn.Module):
        raise AccuracyError(
            "calibration needs a model that runs (an nn.Module); a state dict or checkpoint has "
            "no forward. Build the model and pass it (CLI: --model MODULE:FACTORY)"
        )
    batches = list(iter_batches(calibration))
    if not batches:
        raise AccuracyError("calibration holds no batch (an empty list or iterable)")
    return batches


def quantize_calibrated(
    obj: object,
    calibration: object,
    config: QuantizeConfig,
    plugin_manager: QuantcorePluginManager | None,
    progress: Progress | None,
) -> QuantizationResult:
    """quantize() with calibration inputs (see the module docstring)."""
    from quantcore.api import quantize

    batches = _check_inputs(obj, calibration, config)
    assert isinstance(obj, nn.Module)
    manager = plugin_manager or create_plugin_manager(
        disable=config.disable_plugins, strict=config.strict
    )
    meter = ErrorMeter(config.error_metric, batches)
    meter.record_references(obj)
    model: nn.Module = obj
    smoothed: tuple[str, ...] = ()
    if config.smooth:
        from quantcore.smoothing import smooth_model

        model, smoothed = smooth_model(obj, batches, config, manager)
    full = quantize(model, config=_inner_config(config), plugin_manager=manager, progress=progress)
    assert full.module is not None
    error_all = meter.error(full.module)
    names = [layer.name for layer in full.report.quantized]
    kept: list[KeptForAccuracy] = []
    result = full
    if config.max_error is not None and error_all > config.max_error and names:
        kept = _keep_back(model, full, names, meter, config, manager)
        overrides = [
            Override(
                match=_exact(k.name),
                skip=None if k.fallback else True,
                dtype=k.fallback,
                source=BUDGET_SOURCE,
                index=len(config.overrides) + i,
            )
            for i, k in enumerate(kept)
        ]
        result = quantize(model, config=_inner_config(config, overrides), plugin_manager=manager)
    error = error_all if result is full else meter.error(_module(result))
    accuracy = AccuracyReport(
        meter.name, len(batches), error, error_all, config.max_error, tuple(kept),
        meter.passes, smoothed,
    )  # fmt: skip
    return _finish(result, accuracy, config)


def _module(result: QuantizationResult) -> nn.Module:
    assert result.module is not None
    return result.module


def _keep_back(
    model: nn.Module,
    full: QuantizationResult,
    names: list[str],
    meter: ErrorMeter,
    config: QuantizeConfig,
    manager: QuantcorePluginManager,
) -> list[KeptForAccuracy]:
    from quantcore.api import quantize

    assert config.max_error is not None
    alternative = model
    if config.fallback is not None:
        fallback_config = dataclasses.replace(_inner_config(config), dtype=config.fallback)
        alternative = _module(quantize(model, config=fallback_config, plugin_manager=manager))
    mixed = MixedModel(_module(full), alternative, names, meter)
    everything = frozenset(names)
    sensitivity = {name: mixed.error(everything - {name}) for name in names}
    logger.info("accuracy budget: sensitivities of %d layers measured", len(names))
    chosen = _search(mixed, config.max_error, sensitivity)
    return [
        KeptForAccuracy(name, sensitivity[name], config.fallback)
        for name in names
        if name in chosen
    ]


def _finish(
    result: QuantizationResult, accuracy: AccuracyReport, config: QuantizeConfig
) -> QuantizationResult:
    """The report of the last quantize() call with the budget's layers described as such, the
    caller's configuration, and the accuracy measured."""
    kept = {k.name: k for k in accuracy.kept}
    layers: list[LayerReport] = []
    for layer in result.report.layers:
        k = kept.get(layer.name)
        if k is not None:
            why = (
                f"output {accuracy.metric} error {k.sensitivity:.4g} with only this layer quantized"
            )
            if k.fallback is None:
                layer = dataclasses.replace(
                    layer,
                    status="kept",
                    reason=f"kept float for the accuracy budget: {why}",
                    override=None,
                    requested=False,
                )
            else:
                layer = dataclasses.replace(
                    layer,
                    notes=(*layer.notes, f"{k.fallback} for the accuracy budget: {why}"),
                    override=None,
                )
        layers.append(layer)
    report = dataclasses.replace(
        result.report, layers=tuple(layers), config=config, accuracy=accuracy
    )
    if not accuracy.met:
        logger.warning(
            "accuracy budget %g not met: %s error %.5g with every quantized layer kept back "
            "(%s); raise max_error or choose another fallback",
            accuracy.max_error,
            accuracy.metric,
            accuracy.error,
            accuracy.kept[0].fallback or "float" if accuracy.kept else "float",
        )
    return dataclasses.replace(result, report=report)
