"""Converting: one planned layer through its mapper, the same way for every path (a module, a
state dict, each shard of a sharded checkpoint, and rebuilding a saved file on load)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from quantcore.assemble import module_bytes, tensor_bytes
from quantcore.context import ConversionContext, SharedState
from quantcore.errors import LayerQuantizationError, LayerSkipped
from quantcore.manifest import LayerRecord, WeightRecord
from quantcore.modules import kernel_names
from quantcore.planning import Plan, PlannedLayer
from quantcore.registrations import Registry
from quantcore.report import LayerReport

logger = logging.getLogger("quantcore")

# progress(done, total, layer_name): called before each planned layer and once at the end
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Converted:
    """A converted layer: what its mapper built and the context it built it with."""

    layer: PlannedLayer
    output: nn.Module | Mapping[str, torch.Tensor]
    ctx: ConversionContext

    def report(self) -> LayerReport:
        layer, output = self.layer, self.output
        if isinstance(output, nn.Module):
            assert layer.module is not None
            before, after = module_bytes(layer.module), module_bytes(output)
        else:
            assert layer.tensors is not None
            before, after = tensor_bytes(layer.tensors.values()), tensor_bytes(output.values())
        return layer.line(
            "quantized",
            scheme=layer.scheme.name,
            granularity=layer.spec.describe(),
            kernel=kernel_names(output) if isinstance(output, nn.Module) else None,
            bytes_before=before,
            bytes_after=after,
            notes=(*layer.notes, *self.ctx.notes),
        )

    def record(self) -> LayerRecord:
        """What a file must remember about this layer to build it again without weights."""
        ctx = self.ctx
        return LayerRecord(
            name=self.layer.name,
            layer_kind=self.layer.mapper.layer_kind,
            mapper=self.layer.mapper.name,
            scheme=ctx.scheme.name,
            weight_format=ctx.scheme.weight_format,
            spec=ctx.spec,
            weights=tuple(WeightRecord.of(shape, w) for shape, w in ctx.quantized_weights),
            layer_type=self.layer.layer_type,
        )


def convert_layer(layer: PlannedLayer, ctx: ConversionContext) -> Converted:
    """Run ``layer``'s mapper with ``ctx``.

    Raises LayerSkipped when the mapper or scheme says this layer stays float, and
    LayerQuantizationError (naming the layer) for anything else that goes wrong; the caller's
    objects are untouched either way.
    """
    mapper = layer.mapper
    try:
        with torch.no_grad():
            if layer.module is not None:
                assert mapper.convert is not None
                output: nn.Module | Mapping[str, torch.Tensor] = mapper.convert(layer.module, ctx)
            else:
                assert mapper.convert_state_dict is not None and layer.tensors is not None
                output = mapper.convert_state_dict(layer.prefix, layer.tensors, ctx)
    except (LayerSkipped, LayerQuantizationError):
        raise
    except Exception as exc:
        raise LayerQuantizationError(layer.name, layer.layer_type, exc) from exc
    return Converted(layer, output, ctx)


def context_for(layer: PlannedLayer, registry: Registry, shared: SharedState) -> ConversionContext:
    """The ConversionContext quantizing paths give a planned layer."""
    return ConversionContext(
        layer.name,
        layer.mapper.layer_kind,
        layer.scheme,
        layer.spec,
        registry,
        shared,
        mapper=layer.mapper,
    )


def convert_plan(
    plan: Plan, registry: Registry, shared: SharedState, progress: Progress | None = None
) -> list[Converted]:
    """Convert every planned layer; the plan's report gets a line for each (quantized, or
    skipped with the reason the mapper or scheme gave)."""
    done: list[Converted] = []
    total = len(plan.layers)
    for index, layer in enumerate(plan.layers):
        if progress is not None:
            progress(index, total, layer.name)
        try:
            converted = convert_layer(layer, context_for(layer, registry, shared))
        except LayerSkipped as skip:
            plan.reports[layer.name] = layer.line("skipped", reason=skip.reason)
            logger.info("layer %s skipped: %s", layer.name, skip.reason)
            continue
        plan.reports[layer.name] = converted.report()
        done.append(converted)
    if progress is not None and total:
        progress(total, total, "")
    return done
