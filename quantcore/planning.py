"""Planning: which mapper converts which layer, with which scheme and spec, and a report line for
every layer the plan leaves alone (kept in float on purpose, or skipped and why).

A plan is the same for the three inputs: a module (mappers ``matches`` its modules), a state dict
(mappers recognize layers from tensor names and shapes), and a saved file (its manifest names
each layer's mapper, scheme and spec). Converting (:mod:`quantcore.convert`) and assembling
(:mod:`quantcore.assemble`) do not care which it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quantcore.assemble import tensor_bytes
from quantcore.registrations import LayerMapper, Registry, Scheme
from quantcore.report import LayerReport, LayerStatus
from quantcore.selectors import ModuleLookup, Selection, apply_overrides, decide_layer
from quantcore.specs import LayerSpec


@dataclass(frozen=True)
class PlannedLayer:
    """One layer a mapper will convert: a module (``module``), or the tensors under a state-dict
    prefix (``tensors``, keys relative to ``prefix``)."""

    name: str
    layer_type: str  # the module's class name, or "<kind tensors>" for state-dict input
    mapper: LayerMapper
    scheme: Scheme
    spec: LayerSpec
    override: str | None = None  # the overrides that applied, as reports show them
    notes: tuple[str, ...] = ()
    module: nn.Module | None = None
    prefix: str = ""
    tensors: Mapping[str, torch.Tensor] | None = None

    def line(self, status: LayerStatus, **fields: Any) -> LayerReport:
        """This layer's report line."""
        return LayerReport(
            name=self.name,
            layer_type=self.layer_type,
            status=status,
            layer_kind=self.mapper.layer_kind,
            mapper=self.mapper.name,
            override=self.override,
            **fields,
        )


@dataclass
class Plan:
    """The layers to convert, in order, and the report lines planning already decided."""

    layers: list[PlannedLayer] = field(default_factory=list)
    reports: dict[str, LayerReport] = field(default_factory=dict)
    order: dict[str, int] = field(default_factory=dict)  # report name -> position in the input

    def sorted_reports(self) -> list[LayerReport]:
        return sorted(self.reports.values(), key=lambda r: self.order.get(r.name, len(self.order)))


@dataclass
class _Resolved:
    """A layer's scheme and LayerSpec after overrides, or why it is skipped."""

    scheme: Scheme
    spec: LayerSpec | None
    override: str | None
    skip_reason: str | None = None
    requested: bool = False
    notes: list[str] = field(default_factory=list)
    kept: bool = False  # the scheme keeps this kind float by default (LayerSpec.keep_reason)

    @property
    def status(self) -> LayerStatus:
        return "kept" if self.kept else "skipped"


def resolve_layer(
    name: str,
    type_names: tuple[str, ...],
    kind: str,
    scheme: Scheme,
    registry: Registry,
    selection: Selection,
    lookup: ModuleLookup | None = None,
) -> _Resolved:
    """The overrides' decision for one layer: its scheme, its spec, or why it stays float."""
    decision = decide_layer(selection.overrides, name, (*type_names, kind), lookup)
    override = decision.describe()
    if decision.skip:
        return _Resolved(scheme, None, override, f"skipped by override {override}", requested=True)
    layer_scheme = registry.scheme(decision.dtype) if decision.dtype else scheme
    base = layer_scheme.layer_specs.get(kind)
    if base is None:
        return _Resolved(
            layer_scheme,
            None,
            override,
            f"scheme {layer_scheme.name!r} does not quantize layer kind {kind!r}",
        )
    if base.keep_reason is not None and decision.dtype is None:
        reason = (
            f"kept float by scheme {layer_scheme.name!r}: {base.keep_reason} (an override with "
            f"dtype={layer_scheme.name!r} quantizes it)"
        )
        return _Resolved(layer_scheme, None, override, reason, kept=True)
    if base.keep_reason is not None:
        base = dataclasses.replace(base, keep_reason=None)
    spec, notes = apply_overrides(base, decision.overrides)
    return _Resolved(layer_scheme, spec, override, notes=notes)


def type_names(module: nn.Module) -> tuple[str, ...]:
    """A module's class name and qualified name, as overrides' ``layer_type`` matches them."""
    cls = type(module)
    return (cls.__name__, f"{cls.__module__}.{cls.__qualname__}")


def own_float_parameters(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters(recurse=False) if p.is_floating_point()]


def find_mapper(module: nn.Module, registry: Registry) -> LayerMapper | None:
    """The first mapper (by priority) that claims ``module``."""
    for mapper in registry.layer_mappers:
        if mapper.matches(module):
            return mapper
    return None


def _line(name: str, module: nn.Module, **fields: object) -> LayerReport:
    return LayerReport(name=name, layer_type=type(module).__name__, **fields)  # type: ignore[arg-type]


class _ModulePlanner:
    """Walks ``named_modules()``: the first mapper that matches a module claims it and its
    subtree; a module with float weights of its own that no mapper claims is reported skipped
    and its children are planned as usual."""

    def __init__(
        self, root: nn.Module, scheme: Scheme, registry: Registry, selection: Selection
    ) -> None:
        self.scheme, self.registry, self.selection = scheme, registry, selection
        self.modules = dict(root.named_modules())
        self.plan = Plan(order={name: i for i, name in enumerate(self.modules)})
        self.handled: list[str] = []  # prefixes whose subtree is already decided

    def inside_handled(self, name: str) -> bool:
        return any(name == h or name.startswith(h + ".") or h == "" for h in self.handled)

    def run(self) -> Plan:
        for name, module in self.modules.items():
            if self.handled and self.inside_handled(name):
                continue
            mapper = find_mapper(module, self.registry)
            left_out = self.selection.not_selected(name, self.modules.get)
            if left_out is not None:
                self.leave_out(name, module, mapper, left_out)
            elif mapper is None:
                self.unmapped(name, module)
            else:
                self.handled.append(name)
                self.claim(name, module, mapper)
        return self.plan

    def leave_out(
        self, name: str, module: nn.Module, mapper: LayerMapper | None, reason: str
    ) -> None:
        if mapper is None and not own_float_parameters(module):
            return  # a plain container: its children decide for themselves
        reports = self.plan.reports
        kind = mapper.layer_kind if mapper else None
        reports[name] = _line(
            name, module, status="skipped", reason=reason, layer_kind=kind, requested=True
        )
        self.handled.append(name)
        for child_name, child in module.named_modules(prefix=name):
            if child is not module and own_float_parameters(child):
                reports[child_name] = _line(
                    child_name,
                    child,
                    status="skipped",
                    requested=True,
                    reason=f"inside {name or '<root>'}, which is left out ({reason})",
                )

    def unmapped(self, name: str, module: nn.Module) -> None:
        # Only its own tensors stay float: its children are layers of their own. Should it read
        # a child's weight directly (``child.weight``), quantized layers answer with the
        # dequantized float values, so it still computes correctly.
        own = own_float_parameters(module)
        if own:
            self.plan.reports[name] = _line(
                name,
                module,
                status="skipped",
                reason=f"no mapper for {type(module).__name__}",
                bytes_before=tensor_bytes(own),
            )

    def claim(self, name: str, module: nn.Module, mapper: LayerMapper) -> None:
        kind = mapper.layer_kind
        if mapper.keep_reason is not None:
            self.plan.reports[name] = _line(
                name,
                module,
                status="kept",
                layer_kind=kind,
                mapper=mapper.name,
                reason=mapper.keep_reason,
            )
            return
        resolved = resolve_layer(
            name,
            type_names(module),
            kind,
            self.scheme,
            self.registry,
            self.selection,
            self.modules.get,
        )
        layer_type = type(module).__name__
        if resolved.spec is None:
            self.plan.reports[name] = _line(
                name,
                module,
                status=resolved.status,
                layer_kind=kind,
                mapper=mapper.name,
                reason=resolved.skip_reason,
                override=resolved.override,
                requested=resolved.requested,
            )
            return
        self.plan.layers.append(
            PlannedLayer(
                name,
                layer_type,
                mapper,
                resolved.scheme,
                resolved.spec,
                resolved.override,
                tuple(resolved.notes),
                module=module,
            )
        )


def plan_module(root: nn.Module, scheme: Scheme, registry: Registry, selection: Selection) -> Plan:
    """The plan for a module input: one PlannedLayer per layer a mapper converts, one report line
    per other module holding float weights."""
    return _ModulePlanner(root, scheme, registry, selection).run()


def _under(key: str, prefix: str) -> bool:
    """Whether state-dict ``key`` lies under module prefix ``prefix`` ("a.b." or "")."""
    return key.startswith(prefix)


def _claims(state_dict: Mapping[str, torch.Tensor], registry: Registry) -> dict[str, LayerMapper]:
    """Prefix -> mapper: each mapper (by priority) claims prefixes among the keys no earlier
    mapper claimed; a claim inside another claim is dropped (the outer layer handles its
    subtree, as a mapper that claims a module does)."""
    keys = list(state_dict)
    claims: dict[str, LayerMapper] = {}
    for mapper in registry.layer_mappers:
        if mapper.state_dict_layers is None or mapper.convert_state_dict is None:
            continue
        unclaimed = {k: state_dict[k] for k in keys if not any(_under(k, p) for p in claims)}
        if not unclaimed:
            break
        for prefix in mapper.state_dict_layers(unclaimed):
            if prefix not in claims and any(_under(k, prefix) for k in unclaimed):
                claims[prefix] = mapper
    outer = {p: m for p, m in claims.items() if not any(q != p and p.startswith(q) for q in claims)}
    first_key = {p: next(i for i, k in enumerate(keys) if _under(k, p)) for p in outer}
    return dict(sorted(outer.items(), key=lambda item: first_key[item[0]]))


def _plan_claim(
    plan: Plan,
    prefix: str,
    mapper: LayerMapper,
    state_dict: Mapping[str, torch.Tensor],
    context: tuple[Scheme, Registry, Selection],
) -> None:
    scheme, registry, selection = context
    name, kind = prefix.rstrip("."), mapper.layer_kind
    layer_type = f"<{kind} tensors>"
    left_out = selection.not_selected(name)
    resolved = None
    if left_out is None:
        resolved = resolve_layer(name, (layer_type,), kind, scheme, registry, selection)
    if resolved is None or resolved.spec is None:
        plan.reports[name] = LayerReport(
            name,
            layer_type,
            resolved.status if resolved is not None and left_out is None else "skipped",
            kind,
            mapper=mapper.name,
            reason=left_out or (resolved.skip_reason if resolved else None),
            override=resolved.override if resolved else None,
            requested=left_out is not None or bool(resolved and resolved.requested),
        )
        return
    tensors = {k[len(prefix) :]: t for k, t in state_dict.items() if _under(k, prefix)}
    plan.layers.append(
        PlannedLayer(
            name,
            layer_type,
            mapper,
            resolved.scheme,
            resolved.spec,
            resolved.override,
            tuple(resolved.notes),
            prefix=prefix,
            tensors=tensors,
        )
    )


def _unclaimed_lines(
    state_dict: Mapping[str, torch.Tensor], claimed: Iterable[str], selection: Selection
) -> list[LayerReport]:
    """Report lines for float tensors no mapper claimed, grouped by module prefix: matrices are
    skipped (no mapper recognizes them), vectors kept (norm scales, biases)."""
    groups: dict[str, list[str]] = {}
    prefixes = tuple(claimed)
    for key, t in state_dict.items():
        if t.is_floating_point() and not any(_under(key, p) for p in prefixes):
            groups.setdefault(key.rpartition(".")[0], []).append(key)
    lines = []
    for prefix, group in groups.items():
        matrices = [k.rpartition(".")[2] for k in group if state_dict[k].dim() >= 2]
        left_out = selection.not_selected(prefix)
        if left_out is not None:
            lines.append(
                LayerReport(prefix, "<tensors>", "skipped", reason=left_out, requested=True)
            )
        elif matrices:
            reason = f"no mapper recognizes {', '.join(matrices)}"
            lines.append(LayerReport(prefix, "<tensors>", "skipped", reason=reason))
        else:
            reason = "vectors (norm scales, biases) stay in float"
            lines.append(LayerReport(prefix, "<tensors>", "kept", reason=reason))
    return lines


def plan_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    scheme: Scheme,
    registry: Registry,
    selection: Selection,
) -> Plan:
    """The plan for a bare state dict: mappers recognize layers from tensor names and shapes.

    It mirrors :func:`plan_module` so that a model's state dict gives exactly the tensors the
    model gives: a mapper claims a prefix and every tensor under it.
    """
    plan = Plan(order={key.rpartition(".")[0]: i for i, key in enumerate(state_dict)})
    claims = _claims(state_dict, registry)
    for prefix, mapper in claims.items():
        _plan_claim(plan, prefix, mapper, state_dict, (scheme, registry, selection))
    for line in _unclaimed_lines(state_dict, claims, selection):
        plan.reports[line.name] = line
    return plan
