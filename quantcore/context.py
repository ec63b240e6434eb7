"""What a layer mapper gets when it converts one layer: the scheme's decision for that layer and
the tools to apply it, so mappers never reach into the plugin manager themselves."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from quantcore.errors import LayerSkipped
from quantcore.registrations import KernelBackend, LayerMapper, Registry, Scheme
from quantcore.specs import LayerSpec, QuantizedWeight, WeightSpec


@dataclass
class SharedState:
    """Memo shared by all layers of one quantize() call, so shared tensors stay shared."""

    weights: dict[tuple[int, WeightSpec, str], QuantizedWeight] = field(default_factory=dict)
    clones: dict[int, torch.Tensor] = field(default_factory=dict)
    # The memos are keyed by id(); holding every source tensor for the whole call keeps a computed
    # weight (a parametrization's value, a view) from being freed and its id reused by another.
    keepalive: list[torch.Tensor] = field(default_factory=list)
    # id(source tensor) -> (layer name, layer kind, spec) of every layer that quantized it
    users: dict[int, list[tuple[str, str, WeightSpec]]] = field(default_factory=dict)


@dataclass
class ConversionContext:
    """The per-layer view handed to :attr:`LayerMapper.convert` and ``convert_state_dict``."""

    layer_name: str
    layer_kind: str
    scheme: Scheme
    spec: LayerSpec
    registry: Registry
    shared: SharedState = field(default_factory=SharedState)
    notes: list[str] = field(default_factory=list)
    # every weight this layer quantized, in call order, with the float shape it came from: what a
    # saved file records so the layer can be rebuilt without float weights (quantcore.load)
    quantized_weights: list[tuple[tuple[int, ...], QuantizedWeight]] = field(default_factory=list)
    mapper: LayerMapper | None = None  # the mapper converting this layer

    def quantize_weight(
        self, weight: torch.Tensor, spec: WeightSpec | None = None
    ) -> QuantizedWeight:
        """Quantize ``weight`` with this layer's scheme; the same tensor quantized twice is shared."""
        spec = spec or self.spec.weight
        if weight.is_meta:
            raise LayerSkipped("weight is on the meta device (no values to quantize)")
        if not weight.is_floating_point():
            raise LayerSkipped(f"weight dtype {weight.dtype} is not a floating-point type")
        if weight.numel() == 0:
            raise LayerSkipped("weight is empty")
        key = (id(weight), spec, self.scheme.name)
        self.shared.keepalive.append(weight)
        users = self.shared.users.setdefault(id(weight), [])
        for other, other_kind, other_spec in users:
            if other == self.layer_name:
                continue
            if other_spec == spec:
                self.note(f"weight shared with {other or '<root>'}: quantized once, stays shared")
            else:
                self.note(
                    f"weight tied to {other or '<root>'} ({other_kind}, {other_spec.describe()}) "
                    f"but quantized here as {spec.describe()}: stored twice, no longer tied"
                )
        users.append((self.layer_name, self.layer_kind, spec))
        cached = self.shared.weights.get(key)
        if cached is None:
            observer = self.registry.observer(spec.observer) if spec.observer else None
            with torch.no_grad():
                cached = self.scheme.quantize_weight(weight.detach(), spec, observer)
            if cached.dequantizer is None:
                cached = dataclasses.replace(cached, dequantizer=self.scheme.dequantize_weight)
            self.shared.weights[key] = cached
        self.quantized_weights.append((tuple(weight.shape), cached))
        return cached

    def clone(self, tensor: torch.Tensor) -> torch.Tensor:
        """An independent copy of a float tensor the new layer keeps (a bias, say), shared if reused."""
        cached = self.shared.clones.get(id(tensor))
        if cached is None:
            self.shared.keepalive.append(tensor)
            cached = tensor.detach().clone()
            self.shared.clones[id(tensor)] = cached
        return cached

    def kernel_candidates(
        self, op: str, weight_format: str | None = None
    ) -> tuple[KernelBackend, ...]:
        """Kernel backends for ``op`` on this scheme's weight format, preferred first."""
        return self.registry.kernel_candidates(op, weight_format or self.scheme.weight_format)

    def delegate(self, module: nn.Module, layer_kind: str | None = None) -> nn.Module:
        """Hand ``module`` (a part of this layer, or a stand-in built for it) to the registered
        mapper that converts it: the first by priority whose ``matches`` accepts it (of
        ``layer_kind`` if given), other than this layer's own mapper. It converts with this
        context, so this layer's scheme and spec apply and its weights are recorded here (a saved
        file rebuilds the layer by running this layer's mapper, which delegates again)."""
        for mapper in self.registry.layer_mappers:
            if mapper.convert is None or mapper is self.mapper:
                continue
            if layer_kind is not None and mapper.layer_kind != layer_kind:
                continue
            if mapper.matches(module):
                return mapper.convert(module, self)
        kind = f" of kind {layer_kind!r}" if layer_kind else ""
        raise LayerSkipped(f"no loaded layer mapper{kind} converts {type(module).__name__}")

    def note(self, message: str) -> None:
        """Attach a remark to this layer's line in the report."""
        self.notes.append(message)
