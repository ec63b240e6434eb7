"""Model-agnostic orchestration: adapt the input, plan which mapper handles which layer, convert
each planned layer, assemble the quantized copy and the report.

The caller's objects are only read. The copy shares no tensor with the original and is built
without deep-copying the model: containers are copied shallowly, float tensors that stay float
are cloned, and quantized layers are built fresh from the original weights one at a time.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from quantcore.config import Override, apply_overrides, decide_layer, first_match
from quantcore.context import ConversionContext, SharedState
from quantcore.errors import LayerQuantizationError, LayerSkipped
from quantcore.manifest import LayerRecord, WeightRecord
from quantcore.modules import kernel_names
from quantcore.registrations import LayerMapper, Registry, Scheme
from quantcore.report import LayerReport, LayerStatus
from quantcore.specs import LayerSpec

logger = logging.getLogger("quantcore")

# progress(done, total, layer_name): called before each planned layer and once at the end
Progress = Callable[[int, int, str], None]

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes held by ``tensors``, counting storage shared between them once."""
    seen: set[tuple[int, str]] = set()
    total = 0
    for t in tensors:
        if t.is_meta:
            total += t.numel() * t.element_size()
            continue
        storage = t.untyped_storage()
        key = (storage.data_ptr(), str(t.device))
        if key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def module_bytes(module: nn.Module) -> int:
    return tensor_bytes([*module.parameters(), *module.buffers()])


def own_float_parameters(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters(recurse=False) if p.is_floating_point()]


def is_excluded(name: str, patterns: Sequence[str]) -> str | None:
    """The first pattern that excludes layer ``name`` (or one of its parents), else None."""
    return first_match(patterns, name) if name else None


@dataclass(frozen=True)
class Selection:
    """Which layers the caller wants quantized, and how (from the effective configuration)."""

    include: tuple[str, ...] = ()  # empty: every layer
    exclude: tuple[str, ...] = ()
    overrides: tuple[Override, ...] = ()

    def not_selected(self, name: str) -> str | None:
        """Why layer ``name`` is left out by include/exclude patterns, else None."""
        if self.include and first_match(self.include, name) is None:
            return f"not included by include patterns {list(self.include)}"
        pattern = is_excluded(name, self.exclude)
        return f"excluded by pattern {pattern!r}" if pattern is not None else None


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


def _resolve(
    name: str,
    type_names: tuple[str, ...],
    kind: str,
    scheme: Scheme,
    registry: Registry,
    selection: Selection,
) -> _Resolved:
    decision = decide_layer(selection.overrides, name, (*type_names, kind))
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


def _type_names(module: nn.Module) -> tuple[str, ...]:
    cls = type(module)
    return (cls.__name__, f"{cls.__module__}.{cls.__qualname__}")


@dataclass
class _Planned:
    name: str
    module: nn.Module
    mapper: LayerMapper
    resolved: _Resolved


def _find_mapper(module: nn.Module, registry: Registry) -> LayerMapper | None:
    for mapper in registry.layer_mappers:
        if mapper.matches(module):
            return mapper
    return None


def _layer_report(name: str, module: nn.Module, **fields: object) -> LayerReport:
    return LayerReport(name=name, layer_type=type(module).__name__, **fields)  # type: ignore[arg-type]


def quantize_module(
    root: nn.Module,
    scheme: Scheme,
    registry: Registry,
    *,
    exclude: Sequence[str] = (),
    selection: Selection | None = None,
    records: list[LayerRecord] | None = None,
    progress: Progress | None = None,
) -> tuple[nn.Module, list[LayerReport]]:
    """Return a quantized copy of ``root`` and a report line for every layer holding float weights.

    ``selection`` (include/exclude patterns, per-layer overrides) replaces ``exclude`` when given.
    ``records`` (if given) receives a :class:`LayerRecord` per quantized layer, for saving.
    """
    selection = selection or Selection(exclude=tuple(exclude))
    reports: dict[str, LayerReport] = {}
    planned: list[_Planned] = []
    handled: list[str] = []  # prefixes whose subtree is already decided

    def inside_handled(name: str) -> bool:
        return any(name == h or name.startswith(h + ".") or h == "" for h in handled)

    for name, module in root.named_modules():
        if handled and inside_handled(name):
            continue
        mapper = _find_mapper(module, registry)
        left_out = selection.not_selected(name)
        if left_out is not None:
            if mapper is not None or own_float_parameters(module):
                reports[name] = _layer_report(
                    name,
                    module,
                    status="skipped",
                    reason=left_out,
                    layer_kind=mapper.layer_kind if mapper else None,
                    requested=True,
                )
                handled.append(name)
                for child_name, child in module.named_modules(prefix=name):
                    if child is not module and own_float_parameters(child):
                        reports[child_name] = _layer_report(
                            child_name,
                            child,
                            status="skipped",
                            requested=True,
                            reason=f"inside {name or '<root>'}, which is left out ({left_out})",
                        )
            continue
        if mapper is None:
            if own_float_parameters(module):
                # Only its own tensors stay float: its children are layers of their own. Should
                # it read a child's weight directly (``child.weight``), quantized layers answer
                # with the dequantized float values, so it still computes correctly.
                reports[name] = _layer_report(
                    name,
                    module,
                    status="skipped",
                    reason=f"no mapper for {type(module).__name__}",
                    bytes_before=tensor_bytes(own_float_parameters(module)),
                )
            continue
        handled.append(name)
        if mapper.keep_reason is not None:
            reports[name] = _layer_report(
                name,
                module,
                status="kept",
                layer_kind=mapper.layer_kind,
                mapper=mapper.name,
                reason=mapper.keep_reason,
            )
            continue
        resolved = _resolve(
            name, _type_names(module), mapper.layer_kind, scheme, registry, selection
        )
        if resolved.skip_reason is not None:
            reports[name] = _layer_report(
                name,
                module,
                status=resolved.status,
                layer_kind=mapper.layer_kind,
                mapper=mapper.name,
                reason=resolved.skip_reason,
                override=resolved.override,
                requested=resolved.requested,
            )
            continue
        planned.append(_Planned(name, module, mapper, resolved))

    shared = SharedState()
    replacements: dict[int, nn.Module] = {}
    for index, item in enumerate(planned):
        if progress is not None:
            progress(index, len(planned), item.name)
        layer_scheme, spec = item.resolved.scheme, item.resolved.spec
        assert spec is not None
        ctx = ConversionContext(
            item.name,
            item.mapper.layer_kind,
            layer_scheme,
            spec,
            registry,
            shared,
            mapper=item.mapper,
        )
        assert item.mapper.convert is not None
        try:
            new_module = item.mapper.convert(item.module, ctx)
        except LayerSkipped as skip:
            reports[item.name] = _layer_report(
                item.name,
                item.module,
                status="skipped",
                layer_kind=item.mapper.layer_kind,
                mapper=item.mapper.name,
                reason=skip.reason,
                override=item.resolved.override,
            )
            logger.info("layer %s skipped: %s", item.name, skip.reason)
            continue
        except LayerQuantizationError:
            raise
        except Exception as exc:
            raise LayerQuantizationError(item.name, type(item.module).__name__, exc) from exc
        replacements[id(item.module)] = new_module
        reports[item.name] = _layer_report(
            item.name,
            item.module,
            status="quantized",
            layer_kind=item.mapper.layer_kind,
            scheme=layer_scheme.name,
            granularity=spec.describe(),
            mapper=item.mapper.name,
            kernel=kernel_names(new_module),
            bytes_before=module_bytes(item.module),
            bytes_after=module_bytes(new_module),
            notes=(*item.resolved.notes, *ctx.notes),
            override=item.resolved.override,
        )
        if records is not None:
            records.append(layer_record(item.name, type(item.module).__name__, item.mapper, ctx))
    if progress is not None and planned:
        progress(len(planned), len(planned), "")

    quantized = _copy_tree(root, replacements, shared)
    quantized.eval()
    order = {name: i for i, (name, _) in enumerate(root.named_modules())}
    return quantized, sorted(reports.values(), key=lambda r: order.get(r.name, 0))


def _shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object sharing ``module``'s attributes (its tensor dicts are replaced next)."""
    if parametrize.is_parametrized(module):
        # parametrized modules refuse copy.copy (it pickles); their class is safe to reuse
        new = type(module).__new__(type(module))
        new.__dict__.update(module.__dict__)
        return new
    return copy.copy(module)  # honours __copy__ (GraphModule builds its own class per instance)


def _copy_tree(
    root: nn.Module, replacements: Mapping[int, nn.Module], shared: SharedState
) -> nn.Module:
    """Copy the module tree: replaced modules swapped in, everything else shallow-copied with
    cloned tensors. Modules and tensors that appear twice in the original appear twice here."""
    memo: dict[int, nn.Module] = {}

    def clone_tensor(t: torch.Tensor) -> torch.Tensor:
        cached = shared.clones.get(id(t))
        if cached is None:
            data = t.detach().clone()
            cached = (
                nn.Parameter(data, requires_grad=t.requires_grad)
                if isinstance(t, nn.Parameter)
                else data
            )
            shared.clones[id(t)] = cached
        return cached

    def copy_module(module: nn.Module) -> nn.Module:
        if id(module) in memo:
            return memo[id(module)]
        replacement = replacements.get(id(module))
        if replacement is not None:
            new = replacement
            for attr in ("_forward_hooks", "_forward_pre_hooks"):
                getattr(new, attr).update(getattr(module, attr))
        else:
            new = _shallow_copy(module)
            # clone what the copy holds: a module's own copy protocol (__getstate__) may hand
            # out tensors its live attributes do not keep (a released packed-kernel weight)
            new._parameters = OrderedDict(
                (k, None if p is None else cast(nn.Parameter, clone_tensor(p)))
                for k, p in new._parameters.items()
            )
            new._buffers = OrderedDict(
                (k, None if b is None else clone_tensor(b)) for k, b in new._buffers.items()
            )
            new._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
            for attr in _HOOK_DICTS:
                if attr in module.__dict__:
                    new.__dict__[attr] = OrderedDict(module.__dict__[attr])
            new._modules = OrderedDict()
        memo[id(module)] = new
        if replacement is None:
            for key, child in module._modules.items():
                new._modules[key] = None if child is None else copy_module(child)
        return new

    return copy_module(root)


def _under(key: str, prefix: str) -> bool:
    """Whether state-dict ``key`` lies under module prefix ``prefix`` ("a.b." or "")."""
    return key.startswith(prefix)


def quantize_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    scheme: Scheme,
    registry: Registry,
    *,
    exclude: Sequence[str] = (),
    selection: Selection | None = None,
    records: list[LayerRecord] | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, torch.Tensor], list[LayerReport]]:
    """Quantize a bare state dict: mappers recognize layers from tensor names and shapes.

    Planning mirrors :func:`quantize_module` so that a model's state dict gives exactly the
    tensors the model gives: a mapper claims a prefix and every tensor under it; a claim inside
    another claim is dropped (the outer layer handles its subtree).
    """
    selection = selection or Selection(exclude=tuple(exclude))
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
    # outer claims win, as a mapper that claims a module handles its whole subtree
    claims = {
        p: m for p, m in claims.items() if not any(q != p and p.startswith(q) for q in claims)
    }
    claimed_keys = {k for k in keys if any(_under(k, p) for p in claims)}
    output: dict[str, torch.Tensor] = {}
    reports: list[LayerReport] = []
    converted_keys: set[str] = set()
    shared = SharedState()
    first_key = {p: next(i for i, k in enumerate(keys) if _under(k, p)) for p in claims}
    planned = sorted(claims.items(), key=lambda item: first_key[item[0]])
    for index, (prefix, mapper) in enumerate(planned):
        assert mapper.convert_state_dict is not None
        name = prefix.rstrip(".")
        layer_type = f"<{mapper.layer_kind} tensors>"
        if progress is not None:
            progress(index, len(planned), name)
        tensors = {k[len(prefix) :]: state_dict[k] for k in keys if _under(k, prefix)}
        left_out = selection.not_selected(name)
        resolved: _Resolved | None = None
        reason = None
        if left_out is not None:
            reason = left_out
        else:
            resolved = _resolve(name, (layer_type,), mapper.layer_kind, scheme, registry, selection)
            reason = resolved.skip_reason
        if reason is not None or resolved is None or resolved.spec is None:
            reports.append(
                LayerReport(
                    name,
                    layer_type,
                    resolved.status if resolved is not None and left_out is None else "skipped",
                    mapper.layer_kind,
                    mapper=mapper.name,
                    reason=reason,
                    override=resolved.override if resolved else None,
                    requested=left_out is not None or bool(resolved and resolved.requested),
                )
            )
            continue
        layer_scheme, spec = resolved.scheme, resolved.spec
        ctx = ConversionContext(
            name, mapper.layer_kind, layer_scheme, spec, registry, shared, mapper=mapper
        )
        try:
            converted = mapper.convert_state_dict(prefix, tensors, ctx)
        except LayerSkipped as skip:
            reports.append(
                LayerReport(
                    name,
                    layer_type,
                    "skipped",
                    mapper.layer_kind,
                    mapper=mapper.name,
                    reason=skip.reason,
                    override=resolved.override,
                )
            )
            continue
        except LayerQuantizationError:
            raise
        except Exception as exc:
            raise LayerQuantizationError(name, layer_type, exc) from exc
        converted_keys.update(prefix + key for key in tensors)
        for key, t in converted.items():
            output[prefix + key] = t
        reports.append(
            LayerReport(
                name,
                layer_type,
                "quantized",
                mapper.layer_kind,
                scheme=layer_scheme.name,
                granularity=spec.describe(),
                mapper=mapper.name,
                bytes_before=tensor_bytes(tensors.values()),
                bytes_after=tensor_bytes(converted.values()),
                notes=(*resolved.notes, *ctx.notes),
                override=resolved.override,
            )
        )
        if records is not None:
            records.append(layer_record(name, layer_type, mapper, ctx))
    if progress is not None and planned:
        progress(len(planned), len(planned), "")

    remaining = {k: state_dict[k] for k in keys if k not in converted_keys}
    groups: dict[str, list[str]] = {}
    for key, t in remaining.items():
        clone = shared.clones.get(id(t))
        if clone is None:
            clone = shared.clones[id(t)] = t.detach().clone()
        output[key] = clone
        if t.is_floating_point() and key not in claimed_keys:
            groups.setdefault(key.rpartition(".")[0], []).append(key)
    for prefix, group in groups.items():
        matrices = [k for k in group if remaining[k].dim() >= 2]
        left_out = selection.not_selected(prefix)
        if left_out is not None:
            reports.append(
                LayerReport(prefix, "<tensors>", "skipped", reason=left_out, requested=True)
            )
        elif matrices:
            reports.append(
                LayerReport(
                    prefix,
                    "<tensors>",
                    "skipped",
                    reason=f"no mapper recognizes {', '.join(k.rpartition('.')[2] for k in matrices)}",
                )
            )
        else:
            reports.append(
                LayerReport(
                    prefix,
                    "<tensors>",
                    "kept",
                    reason="vectors (norm scales, biases) stay in float",
                )
            )
    order = {key.rpartition(".")[0]: i for i, key in enumerate(state_dict)}
    ordered = {k: output[k] for k in sorted(output, key=lambda k: _key_order(k, state_dict, order))}
    reports.sort(key=lambda r: order.get(r.name, len(order)))
    return ordered, reports


def layer_record(
    name: str, layer_type: str, mapper: LayerMapper, ctx: ConversionContext
) -> LayerRecord:
    """What a file must remember about one converted layer to build it again without weights."""
    return LayerRecord(
        name=name,
        layer_kind=mapper.layer_kind,
        mapper=mapper.name,
        scheme=ctx.scheme.name,
        weight_format=ctx.scheme.weight_format,
        spec=ctx.spec,
        weights=tuple(WeightRecord.of(shape, w) for shape, w in ctx.quantized_weights),
        layer_type=layer_type,
    )


def _key_order(
    key: str, original: Mapping[str, torch.Tensor], order: Mapping[str, int]
) -> tuple[int, str]:
    return (order.get(key.rpartition(".")[0], len(order)), key)
