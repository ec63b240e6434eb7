"""Rebuilding quantized layers without float weights, from what a manifest records.

The plan comes from the manifest (each recorded layer's module in the skeleton, its mapper,
scheme and spec); ``convert_layer`` runs the recorded mapper's own ``convert`` with a
:class:`RebuildContext`, whose ``quantize_weight`` allocates empty tensors of the recorded
shapes instead of quantizing; the values come from a file afterwards (``quantcore.load``, or
transformers' ``from_pretrained`` through the transformers plugin). No float weight is read, so
the skeleton may live on the meta device.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from quantcore.context import ConversionContext, SharedState
from quantcore.convert import Converted, convert_layer
from quantcore.errors import (
    LayerQuantizationError,
    LayerSkipped,
    QuantcoreError,
    SerializationError,
)
from quantcore.manifest import LayerRecord, Manifest, WeightRecord
from quantcore.planning import PlannedLayer
from quantcore.plugin_manager import QuantcorePluginManager, create_plugin_manager
from quantcore.registrations import AdaptedInput, Registry
from quantcore.specs import QuantizedWeight, WeightSpec

logger = logging.getLogger("quantcore")


@dataclass
class RebuildContext(ConversionContext):
    """A ConversionContext that builds a layer's structure without quantizing anything:
    ``quantize_weight`` returns empty tensors of the shapes the file recorded, ``clone`` an empty
    float tensor; the values come from the file afterwards."""

    planned: tuple[WeightRecord, ...] = ()
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def quantize_weight(
        self, weight: torch.Tensor, spec: WeightSpec | None = None
    ) -> QuantizedWeight:
        index = len(self.quantized_weights)
        if index >= len(self.planned):
            raise SerializationError(
                f"layer {self.layer_name!r}: its mapper asks for more quantized weights than the "
                "file records; the plugin that provides it changed incompatibly since the file "
                "was written"
            )
        record = self.planned[index]
        if tuple(weight.shape) != record.source_shape:
            raise SerializationError(
                f"layer {self.layer_name!r}: the skeleton's weight has shape "
                f"{tuple(weight.shape)}, the file was quantized from shape {record.source_shape}; "
                "build the skeleton with the configuration of the model that was quantized"
            )
        empty = dataclasses.replace(
            record.empty(self.device), dequantizer=self.scheme.dequantize_weight
        )
        self.quantized_weights.append((record.source_shape, empty))
        return empty

    def clone(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.empty(tensor.shape, dtype=tensor.dtype, device=self.device)

    def check_complete(self) -> None:
        if len(self.quantized_weights) != len(self.planned):
            raise SerializationError(
                f"layer {self.layer_name!r}: the file records {len(self.planned)} quantized "
                f"weight(s), its mapper built {len(self.quantized_weights)}; the plugin that "
                "provides it changed incompatibly since the file was written"
            )


def rebuild_layers(
    model: nn.Module,
    manifest: Manifest,
    *,
    plugin_manager: QuantcorePluginManager | None = None,
    device: torch.device | str = "meta",
    source: str = "the file",
) -> dict[str, nn.Module]:
    """The quantized layers ``manifest`` records, built on ``model``'s modules with empty tensors
    on ``device`` (layer name -> new module). ``model`` is not modified: a library that loads
    weights itself (transformers' ``from_pretrained``) swaps them in and fills their tensors."""
    registry = (plugin_manager or create_plugin_manager()).registry()
    built, _, _ = rebuild(model, manifest, registry, torch.device(device), source)
    return built


def rebuild(
    skeleton: nn.Module, manifest: Manifest, registry: Registry, device: torch.device, source: str
) -> tuple[dict[str, nn.Module], set[int], SharedState]:
    """Every layer ``manifest`` records, built on ``skeleton``'s modules (name -> new module),
    the ids of their quantized tensors, and the shared clones (for assembling a copy)."""
    shared = SharedState()
    built: dict[str, nn.Module] = {}
    quantized_ids: set[int] = set()  # the tensors of quantized weights, as the file records them
    for layer, record in plan_rebuild(skeleton, manifest, registry, source):
        converted = rebuild_layer(layer, record, registry, shared, device)
        assert isinstance(converted.output, nn.Module)
        built[layer.name] = converted.output
        for _, weight in converted.ctx.quantized_weights:
            quantized_ids.update(
                id(t) for t in (weight.data, weight.scale, weight.zero_point) if t is not None
            )
    return built, quantized_ids, shared


def plan_rebuild(
    skeleton: nn.Module, manifest: Manifest, registry: Registry, source: str = "the file"
) -> list[tuple[PlannedLayer, LayerRecord]]:
    """The layers a file records, each with the skeleton's module and the recorded mapper,
    scheme and spec: the plan of a rebuild."""
    mappers = {m.name: m for m in registry.layer_mappers}
    modules = dict(skeleton.named_modules())
    planned = []
    for record in manifest.layers:
        module = modules.get(record.name)
        if module is None:
            raise SerializationError(
                f"{source}: the file has quantized layer {record.name!r}, which the skeleton "
                f"({type(skeleton).__name__}) does not have; pass a skeleton of the model that was "
                "quantized"
            )
        mapper = mappers.get(record.mapper)
        if mapper is None or mapper.convert is None:
            raise SerializationError(
                f"{source}: layer {record.name!r} was quantized by layer mapper "
                f"{record.mapper!r}, which no loaded plugin provides; install the plugin that "
                "provides it (`quantcore plugins` lists what is loaded)"
            )
        if not mapper.matches(module):
            raise SerializationError(
                f"{source}: layer {record.name!r} is a {type(module).__name__} in the "
                f"skeleton, which layer mapper {record.mapper!r} does not handle (the file says "
                f"{record.layer_type or record.layer_kind}); pass a skeleton of the model that "
                "was quantized"
            )
        scheme = registry.scheme(record.scheme)
        layer = PlannedLayer(
            record.name, type(module).__name__, mapper, scheme, record.spec, module=module
        )
        planned.append((layer, record))
    return planned


def rebuild_layer(
    layer: PlannedLayer,
    record: LayerRecord,
    registry: Registry,
    shared: SharedState,
    device: torch.device,
) -> Converted:
    """The layer built again by its mapper's own ``convert``, with empty tensors of the
    recorded shapes (:class:`RebuildContext`)."""
    ctx = RebuildContext(
        layer.name,
        record.layer_kind,
        layer.scheme,
        layer.spec,
        registry,
        shared,
        mapper=layer.mapper,
        planned=record.weights,
        device=device,
    )
    try:
        converted = convert_layer(layer, ctx)
    except LayerSkipped as exc:
        raise SerializationError(f"rebuilding layer {layer.name!r} failed: {exc.reason}") from exc
    except LayerQuantizationError as exc:
        cause = exc.cause
        if isinstance(cause, QuantcoreError):
            raise SerializationError(f"rebuilding layer {layer.name!r} failed: {cause}") from cause
        raise SerializationError(
            f"rebuilding layer {layer.name!r} with mapper {record.mapper!r} failed: "
            f"{type(cause).__name__}: {cause}"
        ) from cause
    ctx.check_complete()
    return converted


def adapt_skeleton(skeleton: nn.Module, registry: Registry) -> AdaptedInput | None:
    """What the input adapters make of the skeleton (for its ``finalize``), or None."""
    for adapter in registry.input_adapters:
        try:
            if adapter.accepts(skeleton):
                return adapter.adapt(skeleton)
        except Exception as exc:  # the model is loaded; a library annotation is optional
            logger.warning("input adapter %r failed on the skeleton: %s", adapter.name, exc)
            return None
    return None


def refuse_meta_tensors(model: nn.Module, path: Path) -> None:
    """A tensor left on the meta device has no values: the model would crash or return NaN
    later. Refuse it now, naming the tensors."""
    still_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if still_meta:
        shown = ", ".join(still_meta[:10]) + (" ..." if len(still_meta) > 10 else "")
        raise SerializationError(
            f"{path}: {len(still_meta)} tensor(s) are not in the file and are on the meta device "
            f"in the skeleton, so they have no values: {shown}. These are buffers a model "
            "computes when it is built (rotary inv_freq, position_ids): build the skeleton with "
            "real buffers (parameters alone on meta, e.g. build on CPU, or under "
            "torch.device('meta') and then set those buffers), or, for a transformers model, "
            "build it with from_config (quantcore then recomputes them)."
        )
