"""The one call users make: :func:`quantize`."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, overload

import torch
from torch import nn

from quantcore.errors import UnsupportedInputError
from quantcore.manifest import LayerRecord, Manifest
from quantcore.orchestrate import (
    Progress,
    module_bytes,
    quantize_module,
    quantize_state_dict,
    tensor_bytes,
)
from quantcore.plugin_manager import (
    PluginInfo,
    QuantcorePluginManager,
    Registry,
    create_plugin_manager,
)
from quantcore.registrations import AdaptedInput, Scheme
from quantcore.report import QuantizationReport

logger = logging.getLogger("quantcore")

Output = Literal["result", "module", "state_dict"]

_TORCH_DTYPE_NAMES = {torch.int8: "int8", torch.float16: "fp16"}


@dataclass(frozen=True)
class QuantizationResult:
    """The quantized model, its state dict, and the report of what happened to every layer.

    ``module`` is None when the input was a state dict. ``quantcore.save(result, path)`` writes it.
    """

    module: nn.Module | None
    state_dict: dict[str, torch.Tensor]
    report: QuantizationReport
    manifest: Manifest | None = None  # what quantcore.save() writes next to the tensors


def _describe(obj: object) -> str:
    if isinstance(obj, Mapping):
        return f"a {type(obj).__name__} with {len(obj)} entries"
    if isinstance(obj, str):
        return f"the string {obj[:200]!r}"
    return f"an object of type {type(obj).__module__}.{type(obj).__qualname__}"


def adapt_input(obj: object, registry: Registry) -> AdaptedInput:
    """Run the first input adapter (by priority) that accepts ``obj``.

    When none does, the error says what was received, which adapters were tried (with their
    reasons for declining, where they give one) and what each would accept.
    """
    tried: list[str] = []
    reasons: dict[str, str] = {}
    for adapter in registry.input_adapters:
        tried.append(adapter.name)
        if adapter.accepts(obj):
            return adapter.adapt(obj)
        if adapter.explain is not None:
            try:
                reason = adapter.explain(obj)
            except Exception as exc:  # an explanation must never hide the real error
                reason = f"explain() raised {type(exc).__name__}"
            if reason:
                reasons[adapter.name] = reason
    accepted = [f"{a.description} ({a.name})" for a in registry.input_adapters if a.description]
    hint = f"What works: {'; '.join(accepted)}." if accepted else ""
    raise UnsupportedInputError(_describe(obj), tried, hint, reasons)


def _plugin_manager(
    plugin_manager: QuantcorePluginManager | None,
    disable_plugins: Iterable[str] | None,
    strict: bool,
) -> QuantcorePluginManager:
    if plugin_manager is not None:
        return plugin_manager
    return create_plugin_manager(disable=disable_plugins, strict=strict)


@overload
def quantize(
    obj: object, dtype: str | torch.dtype = ..., *, output: Literal["result"] = ...,
    exclude: Iterable[str] = ..., plugin_manager: QuantcorePluginManager | None = ...,
    disable_plugins: Iterable[str] | None = ..., strict: bool = ...,
    progress: Progress | None = ...,
) -> QuantizationResult: ...
@overload
def quantize(
    obj: object, dtype: str | torch.dtype = ..., *, output: Literal["module"],
    exclude: Iterable[str] = ..., plugin_manager: QuantcorePluginManager | None = ...,
    disable_plugins: Iterable[str] | None = ..., strict: bool = ...,
    progress: Progress | None = ...,
) -> nn.Module: ...
@overload
def quantize(
    obj: object, dtype: str | torch.dtype = ..., *, output: Literal["state_dict"],
    exclude: Iterable[str] = ..., plugin_manager: QuantcorePluginManager | None = ...,
    disable_plugins: Iterable[str] | None = ..., strict: bool = ...,
    progress: Progress | None = ...,
) -> dict[str, torch.Tensor]: ...
def quantize(
    obj: object,
    dtype: str | torch.dtype = "int8",
    *,
    output: Output = "result",
    exclude: Iterable[str] = (),
    plugin_manager: QuantcorePluginManager | None = None,
    disable_plugins: Iterable[str] | None = None,
    strict: bool = False,
    progress: Progress | None = None,
) -> QuantizationResult | nn.Module | dict[str, torch.Tensor]:
    """Quantize a model (``nn.Module``) or a state dict with dynamic quantization.

    Args:
        obj: what to quantize. It is never modified.
        dtype: the scheme: ``"int8"`` (default) or ``"fp16"`` from the built-in plugins, or any
            scheme a plugin provides. ``torch.int8`` and ``torch.float16`` are accepted too.
        output: ``"result"`` for a :class:`QuantizationResult`, ``"module"`` or ``"state_dict"``
            for just that part.
        exclude: glob patterns of layer names (``"encoder.*"``, ``"lm_head"``) to keep in float;
            a pattern matching a module excludes everything inside it.
        plugin_manager: the plugins to use; by default a fresh manager from installed entry points.
        disable_plugins: plugin (entry-point) or distribution names not to load.
        strict: turn third-party plugin failures into errors instead of warnings.
        progress: called as ``progress(done, total, layer_name)`` while layers are converted.

    Layers that cannot be quantized are kept in float and listed in the report as skipped.
    """
    if output not in ("result", "module", "state_dict"):
        raise ValueError(f"output must be 'result', 'module' or 'state_dict', not {output!r}")
    job = prepare_job(obj, dtype, exclude, plugin_manager, disable_plugins, strict)
    result = job.run(job.adapted, progress)
    module = result.module
    if output == "module":
        if module is None:
            raise ValueError("output='module' needs a module input; a state dict gives output='state_dict'")
        return module
    if output == "state_dict":
        return result.state_dict
    return result


@dataclass(frozen=True)
class QuantizationJob:
    """One quantize() call after plugins are loaded, the scheme chosen and the input adapted.

    ``run`` quantizes an adapted input; a sharded input is run shard by shard by
    ``quantcore.quantize_to_file`` (each shard as ``AdaptedInput(state_dict=...)``) so only one
    shard is in memory at a time.
    """

    manager: QuantcorePluginManager
    registry: Registry
    scheme: Scheme
    adapted: AdaptedInput
    exclude: tuple[str, ...]

    def run(
        self, adapted: AdaptedInput, progress: Progress | None = None, *, log: bool = True
    ) -> QuantizationResult:
        scheme, registry, patterns = self.scheme, self.registry, self.exclude
        records: list[LayerRecord] = []
        module: nn.Module | None = None
        if adapted.module is not None:
            module, layers = quantize_module(
                adapted.module, scheme, registry, exclude=patterns, records=records,
                progress=progress,
            )
            state_dict = module.state_dict()
            size_before, size_after = module_bytes(adapted.module), module_bytes(module)
        elif adapted.state_dict is not None:
            state_dict, layers = quantize_state_dict(
                adapted.state_dict, scheme, registry, exclude=patterns, records=records,
                progress=progress,
            )
            size_before = tensor_bytes(adapted.state_dict.values())
            size_after = tensor_bytes(state_dict.values())
        else:
            # quantize() returns everything in memory; quantize_to_file() streams the shards.
            assert adapted.shards is not None
            state_dict, layers, size_before = {}, [], 0
            for shard in adapted.shards:
                tensors = shard.load()
                part, part_layers = quantize_state_dict(
                    tensors, scheme, registry, exclude=patterns, records=records,
                    progress=progress,
                )
                size_before += tensor_bytes(tensors.values())
                state_dict.update(part)
                layers.extend(part_layers)
                del tensors
            size_after = tensor_bytes(state_dict.values())
        manifest = Manifest(scheme.name, tuple(records), quantcore_version())
        if module is not None:
            attach_manifest(module, manifest)
        report = QuantizationReport(
            scheme=scheme.name,
            input_description=adapted.description,
            layers=tuple(layers),
            size_before=size_before,
            size_after=size_after,
            notes=adapted.notes,
            plugins=tuple(
                name for name, plugin in self.manager.list_name_plugin() if plugin is not None
            ),
        )
        if log:
            _log_report(report)
        return QuantizationResult(module, state_dict, report, manifest)


def prepare_job(
    obj: object,
    dtype: str | torch.dtype = "int8",
    exclude: Iterable[str] = (),
    plugin_manager: QuantcorePluginManager | None = None,
    disable_plugins: Iterable[str] | None = None,
    strict: bool = False,
) -> QuantizationJob:
    """Load plugins, pick the scheme and adapt the input: everything before quantizing."""
    scheme_name = (
        _TORCH_DTYPE_NAMES.get(dtype, str(dtype)) if isinstance(dtype, torch.dtype) else dtype
    )
    if not isinstance(scheme_name, str):
        raise TypeError(f"dtype must be a scheme name such as 'int8' or 'fp16', not {dtype!r}")
    patterns = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    manager = _plugin_manager(plugin_manager, disable_plugins, strict)
    registry = manager.registry()
    scheme = registry.scheme(scheme_name)
    adapted = adapt_input(obj, registry)
    return QuantizationJob(manager, registry, scheme, adapted, patterns)


MANIFEST_ATTRIBUTE = "_quantcore_manifest"


def attach_manifest(module: nn.Module, manifest: Manifest) -> None:
    """Remember on a quantized root module what quantcore.save() must write for it."""
    module.__dict__[MANIFEST_ATTRIBUTE] = manifest


def manifest_of(module: nn.Module) -> Manifest | None:
    """The manifest of a module returned by quantize() or load(), else None."""
    found = module.__dict__.get(MANIFEST_ATTRIBUTE)
    return found if isinstance(found, Manifest) else None


def quantcore_version() -> str:
    from importlib_metadata import PackageNotFoundError, version

    try:
        return version("quantcore")
    except PackageNotFoundError:
        return "0.0.0+unknown"


def _log_report(report: QuantizationReport) -> None:
    if not report.quantized:
        logger.warning(
            "nothing was quantized with scheme %r: no layer of the input is handled by a loaded "
            "layer mapper (see the report for every layer and the reason)", report.scheme,
        )
    if report.skipped:
        logger.warning(
            "%d layer(s) kept in float because they could not be quantized: %s",
            len(report.skipped),
            "; ".join(f"{s.name or '<root>'} ({s.reason})" for s in report.skipped[:10])
            + (" ..." if len(report.skipped) > 10 else ""),
        )
    logger.info("%s", report.summary())


def list_plugins(plugin_manager: QuantcorePluginManager | None = None) -> list[PluginInfo]:
    """Every plugin quantcore sees: loaded, disabled or failed, and what each provides."""
    manager = plugin_manager or create_plugin_manager()
    return manager.plugin_infos()
