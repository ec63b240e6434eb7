"""One quantizing call from start to end: settings resolved, plugins loaded, input adapted, then
plan -> convert -> assemble for a module, a state dict or each shard, and one step that finishes
the result (checks, manifest, report, log) for every path."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from quantcore.assemble import assemble_module, assemble_state_dict, module_bytes, tensor_bytes
from quantcore.config import QuantizeConfig, validate_names
from quantcore.context import SharedState
from quantcore.convert import Progress, convert_plan
from quantcore.errors import (
    ConfigValueError,
    NothingToQuantizeError,
    QuantcoreError,
    UnknownSchemeError,
    UnsupportedInputError,
)
from quantcore.fusion import fuse_activations
from quantcore.manifest import LayerRecord, Manifest, attach_manifest, quantcore_version
from quantcore.planning import plan_module, plan_state_dict, type_names
from quantcore.plugin_manager import QuantcorePluginManager, create_plugin_manager
from quantcore.registrations import AdaptedInput, Registry, Scheme, StateDictShard
from quantcore.report import LayerReport, QuantizationReport
from quantcore.selectors import Selection, describe_selector, selector_matches
from quantcore.torch_state import logger_level, preserved_global_state

logger = logging.getLogger("quantcore")


@dataclass(frozen=True)
class QuantizationResult:
    """The quantized model, its state dict, and the report of what happened to every layer.

    ``module`` is None when the input was a state dict. ``quantcore.save(result, path)`` writes it.
    """

    module: nn.Module | None
    # state-dict input only: a module's state dict is read from it on access (see state_dict)
    quantized_state_dict: dict[str, torch.Tensor] | None
    report: QuantizationReport
    manifest: Manifest | None = None  # what quantcore.save() writes next to the tensors

    @property
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The quantized tensors by name. For a module, ``module.state_dict()`` at the time of
        access: the result holds no tensor of its own, so it keeps nothing alive that the
        module's layers let go (a layer whose kernel packed its weight drops the plain copy)."""
        if self.module is not None:
            return dict(self.module.state_dict())
        assert self.quantized_state_dict is not None
        return self.quantized_state_dict


def _describe(obj: object) -> str:
    if isinstance(obj, Mapping):
        return f"a {type(obj).__name__} with {len(obj)} entries"
    if isinstance(obj, str):
        return f"the string {obj[:200]!r}"
    return f"an object of type {type(obj).__module__}.{type(obj).__qualname__}"


def _explain(adapter: object, obj: object) -> str | None:
    explain = getattr(adapter, "explain", None)
    if explain is None:
        return None
    try:
        return explain(obj)  # type: ignore[no-any-return]
    except Exception as exc:  # an explanation must never hide the real error
        return f"explain() raised {type(exc).__name__}"


def adapt_input(obj: object, registry: Registry) -> AdaptedInput:
    """Run the first input adapter (by priority) that accepts ``obj``.

    When none does, the error says what was received, which adapters were tried (with their
    reasons for declining, where they give one) and what each would accept.
    """
    tried: list[str] = []
    reasons: dict[str, str] = {}
    for adapter in registry.input_adapters:
        tried.append(adapter.name)
        try:
            takes = bool(adapter.accepts(obj))
        except Exception as exc:  # an adapter that cannot even look at the object declines it
            reasons[adapter.name] = f"accepts() raised {type(exc).__name__}: {exc}"
            continue
        if takes:
            try:
                return adapter.adapt(obj)
            except QuantcoreError:
                raise
            except Exception as exc:
                raise UnsupportedInputError(
                    _describe(obj),
                    tried,
                    f"Input adapter {adapter.name!r} ({registry.provider('input adapter', adapter.name)}) "
                    f"accepted it but failed: {type(exc).__name__}: {exc}",
                    reasons,
                ) from exc
        reason = _explain(adapter, obj)
        if reason:
            reasons[adapter.name] = reason
    accepted = [f"{a.description} ({a.name})" for a in registry.input_adapters if a.description]
    hint = f"What works: {'; '.join(accepted)}." if accepted else ""
    raise UnsupportedInputError(_describe(obj), tried, hint, reasons)


@dataclass
class Quantized:
    """What one path produced before the result is finished: the quantized module or state
    dict, a report line per layer, a record per converted layer, and the sizes."""

    module: nn.Module | None
    state_dict: dict[str, torch.Tensor] | None
    layers: list[LayerReport]
    records: list[LayerRecord]
    size_before: int
    size_after: int
    modules: Mapping[str, nn.Module] = field(default_factory=dict)  # the input's, by name

    @classmethod
    def merge(cls, parts: Sequence[Quantized]) -> Quantized:
        """Shards quantized one by one, as one input (state dicts merged if they were kept)."""
        state_dict: dict[str, torch.Tensor] = {}
        for part in parts:
            state_dict.update(part.state_dict or {})
        return cls(
            None,
            state_dict,
            [line for part in parts for line in part.layers],
            [record for part in parts for record in part.records],
            sum(part.size_before for part in parts),
            sum(part.size_after for part in parts),
        )


@dataclass(frozen=True)
class QuantizationJob:
    """One quantizing call after plugins are loaded, the scheme chosen and the input adapted.

    :meth:`run` quantizes everything in memory; ``quantcore.quantize_to_file`` streams a
    sharded input through :meth:`quantize_shards` instead. Both end in :meth:`finish`.
    """

    manager: QuantcorePluginManager
    registry: Registry
    scheme: Scheme
    adapted: AdaptedInput
    config: QuantizeConfig

    @property
    def selection(self) -> Selection:
        return Selection(self.config.include, self.config.exclude, self.config.overrides)

    def quantize_module(self, root: nn.Module, progress: Progress | None = None) -> Quantized:
        plan = plan_module(root, self.scheme, self.registry, self.selection)
        shared = SharedState()
        converted = convert_plan(plan, self.registry, shared, progress)
        replacements = {
            id(c.layer.module): c.output for c in converted if isinstance(c.output, nn.Module)
        }
        module = assemble_module(root, replacements, shared)
        module.eval()
        fused = fuse_activations(module) if self.config.fuse_activations else {}
        return Quantized(
            module,
            None,  # read from the module when asked (QuantizationResult.state_dict)
            [_note_fused(r, fused.get(r.name)) for r in plan.sorted_reports()],
            [c.record() for c in converted],
            module_bytes(root),
            module_bytes(module),
            dict(root.named_modules()),
        )

    def quantize_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], progress: Progress | None = None
    ) -> Quantized:
        plan = plan_state_dict(state_dict, self.scheme, self.registry, self.selection)
        shared = SharedState()
        converted = convert_plan(plan, self.registry, shared, progress)
        outputs = {
            c.layer.prefix: c.output for c in converted if not isinstance(c.output, nn.Module)
        }
        quantized = assemble_state_dict(state_dict, outputs, shared)
        return Quantized(
            None,
            quantized,
            plan.sorted_reports(),
            [c.record() for c in converted],
            tensor_bytes(state_dict.values()),
            tensor_bytes(quantized.values()),
        )

    def quantize_shards(
        self, progress: Progress | None = None, on_shard: Progress | None = None
    ) -> Iterator[tuple[StateDictShard, Quantized]]:
        """Each shard through the state-dict path, one at a time: only one shard's float tensors
        are in memory at once. ``on_shard(index, count, name)`` is called before each is read."""
        assert self.adapted.shards is not None
        shards = self.adapted.shards
        for index, shard in enumerate(shards):
            if on_shard is not None:
                on_shard(index, len(shards), shard.name)
            tensors = shard.load()
            part = self.quantize_state_dict(tensors, progress)
            del tensors
            yield shard, part

    def run(self, progress: Progress | None = None) -> QuantizationResult:
        """Quantize the adapted input, everything in memory."""
        adapted = self.adapted
        if adapted.module is not None:
            part = self.quantize_module(adapted.module, progress)
        elif adapted.state_dict is not None:
            part = self.quantize_state_dict(adapted.state_dict, progress)
        else:
            part = Quantized.merge([p for _, p in self.quantize_shards(progress)])
        return self.finish(part)

    def manifest(self, records: Sequence[LayerRecord]) -> Manifest:
        return Manifest(self.scheme.name, tuple(records), quantcore_version())

    def finish(self, part: Quantized) -> QuantizationResult:
        """The one assembly step of every path: check the selection against what was found,
        build the manifest and the report, log it."""
        self.check_result(part.layers, part.modules)
        manifest = self.manifest(part.records)
        if part.module is not None:
            attach_manifest(part.module, manifest)
            if self.adapted.finalize is not None:  # an adapter's library annotation
                self.adapted.finalize(part.module, manifest)
        report = QuantizationReport(
            scheme=self.scheme.name,
            input_description=self.adapted.description,
            layers=tuple(part.layers),
            size_before=part.size_before,
            size_after=part.size_after,
            notes=self.adapted.notes,
            plugins=tuple(
                name for name, plugin in self.manager.list_name_plugin() if plugin is not None
            ),
            config=self.config,
        )
        log_report(report)
        return QuantizationResult(part.module, part.state_dict, report, manifest)

    def check_result(self, layers: Sequence[LayerReport], modules: Mapping[str, nn.Module]) -> None:
        """Unused selectors warn (raise when strict); strict mode refuses an empty result."""
        _check_selectors_used(self.config, layers, modules)
        if self.config.strict and not any(layer.status == "quantized" for layer in layers):
            reasons = "; ".join(f"{r.name or '<root>'}: {r.reason}" for r in layers[:5] if r.reason)
            raise NothingToQuantizeError(
                f"nothing was quantized with scheme {self.scheme.name!r} and strict=True: "
                f"{len(layers)} layer(s) with weights, none quantized "
                f"({reasons or 'the input has no layers'}). Widen include/exclude/overrides, "
                "install a plugin that handles these layers, or drop strict to get the report "
                "instead."
            )


def prepare_job(
    obj: object, config: QuantizeConfig, plugin_manager: QuantcorePluginManager | None = None
) -> QuantizationJob:
    """Load plugins, check names, pick the scheme and adapt the input: all before quantizing."""
    if plugin_manager is not None and config.disable_plugins:
        logger.info(
            "disable_plugins (%s, from %s) does not apply: the plugin_manager passed in is used "
            "as is",
            ", ".join(config.disable_plugins),
            config.source("disable_plugins"),
        )
    manager = plugin_manager or create_plugin_manager(
        disable=config.disable_plugins, strict=config.strict
    )
    registry = manager.registry()
    try:
        validate_names(config, registry)
        scheme = registry.scheme(config.dtype) if config.dtype else registry.default_scheme()
    except UnknownSchemeError as exc:
        hint = _unloaded_plugins_hint(manager)
        if not hint:
            raise
        hints = ". ".join(h for h in (exc.hint, hint) if h)
        raise UnknownSchemeError(exc.name, exc.available, exc.aliases, hints) from None
    adapted = adapt_input(obj, registry)
    if config.dtype is None:  # the plugins' default: the report and `config show` name it
        config = dataclasses.replace(config, dtype=scheme.name)
    return QuantizationJob(manager, registry, scheme, adapted, config)


@contextmanager
def configured_job(
    obj: object, config: QuantizeConfig, plugin_manager: QuantcorePluginManager | None = None
) -> Iterator[QuantizationJob]:
    """Everything a quantizing call does before and around the work: load plugins, adapt the
    input, set the log level, and leave torch's global state as it was."""
    with preserved_global_state(), logger_level(config.log_level):
        yield prepare_job(obj, config, plugin_manager)


def needs_calibration(config: QuantizeConfig, calibration: object) -> bool:
    """Whether a call goes through the accuracy path (quantcore/accuracy.py)."""
    return calibration is not None or config.max_error is not None or config.smooth


def quantize_result(
    obj: object,
    config: QuantizeConfig,
    plugin_manager: QuantcorePluginManager | None = None,
    progress: Progress | None = None,
    calibration: object = None,
) -> QuantizationResult:
    """A quantized result in memory: one job, or with calibration inputs the accuracy path
    (which is itself made of such calls, docs/accuracy.md)."""
    if needs_calibration(config, calibration):
        from quantcore.accuracy import quantize_calibrated

        return quantize_calibrated(obj, calibration, config, plugin_manager, progress)
    with configured_job(obj, config, plugin_manager) as job:
        return job.run(progress)


def _unloaded_plugins_hint(manager: QuantcorePluginManager) -> str:
    """Name disabled or failed plugins: the scheme the caller wants may come from one of them."""
    infos = [i for i in manager.plugin_infos() if i.status != "loaded"]
    if not infos:
        return ""
    listed = ", ".join(f"{i.name!r} ({i.status})" for i in infos)
    return (
        f"Plugins not loaded: {listed}; a disabled plugin is enabled again by removing it from "
        "disable_plugins / QUANTCORE_DISABLE_PLUGINS"
    )


def _unused_selectors(
    config: QuantizeConfig, layers: Sequence[LayerReport], modules: Mapping[str, nn.Module]
) -> list[tuple[str, str, str]]:
    """(source, key, selector) of every include/exclude selector and override that matches no
    layer of the report."""
    names = [layer.name for layer in layers]
    unused: list[tuple[str, str, str]] = []
    for key in ("include", "exclude"):
        for i, selector in enumerate(getattr(config, key)):
            if not any(selector_matches(selector, name, modules.get) for name in names):
                unused.append((config.source(key), f"{key}[{i}]", describe_selector(selector)))
    for o in config.overrides:
        hit = any(
            o.matches(
                layer.name,
                (*_type_names(layer, modules), layer.layer_kind or ""),
                modules.get,
            )
            for layer in layers
        )
        if not hit:
            shown = describe_selector(o.match) if o.match is not None else o.layer_type or ""
            unused.append((o.source, f"overrides[{o.index}]", shown))
    return unused


def _type_names(layer: LayerReport, modules: Mapping[str, nn.Module]) -> tuple[str, ...]:
    module = modules.get(layer.name)
    return type_names(module) if module is not None else (layer.layer_type,)


def _check_selectors_used(
    config: QuantizeConfig, layers: Sequence[LayerReport], modules: Mapping[str, nn.Module]
) -> None:
    """A pattern or override that matches no layer is usually a typo: warn (error when strict)."""
    names = [layer.name for layer in layers]
    shown = ", ".join(repr(n) for n in names[:8]) + (", ..." if len(names) > 8 else "")
    for source, key, pattern in _unused_selectors(config, layers, modules):
        error = ConfigValueError(
            source,
            key,
            f"{pattern!r} matches no layer of the input (layers with weights: {shown or 'none'})",
            got=pattern,
            choices=names,
        )
        if config.strict:
            raise error
        logger.warning("%s (quantization continues)", error)


def _note_fused(report: LayerReport, activation: str | None) -> LayerReport:
    if activation is None:
        return report
    note = f"the following {activation} runs in this layer's kernel (fused)"
    return dataclasses.replace(report, notes=(*report.notes, note))


def log_report(report: QuantizationReport) -> None:
    if not report.quantized:
        logger.warning(
            "nothing was quantized with scheme %r: no layer of the input is handled by a loaded "
            "layer mapper (see the report for every layer and the reason)",
            report.scheme,
        )
    unsupported = [s for s in report.skipped if not s.requested]
    if unsupported:
        logger.warning(
            "%d layer(s) kept in float because they could not be quantized: %s",
            len(unsupported),
            _layer_list(unsupported),
        )
    requested = [s for s in report.skipped if s.requested]
    if requested:
        logger.info(
            "%d layer(s) left in float as configured: %s", len(requested), _layer_list(requested)
        )
    logger.info("%s", report.summary())


def _layer_list(layers: Sequence[LayerReport]) -> str:
    return "; ".join(f"{s.name or '<root>'} ({s.reason})" for s in layers[:10]) + (
        " ..." if len(layers) > 10 else ""
    )
