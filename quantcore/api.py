"""The one call users make: :func:`quantize`."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
from torch import nn

from quantcore.config import (
    ConfigInput,
    Override,
    QuantizeConfig,
    pattern_matches,
    resolve_config,
    validate_names,
)
from quantcore.errors import (
    ConfigValueError,
    NothingToQuantizeError,
    QuantcoreError,
    UnknownSchemeError,
    UnsupportedInputError,
)
from quantcore.manifest import LayerRecord, Manifest
from quantcore.orchestrate import (
    Progress,
    Selection,
    module_bytes,
    quantize_module,
    quantize_state_dict,
    tensor_bytes,
)
from quantcore.plugin_manager import (
    PluginInfo,
    QuantcorePluginManager,
    create_plugin_manager,
)
from quantcore.registrations import AdaptedInput, Registry, Scheme
from quantcore.report import LayerReport, QuantizationReport

logger = logging.getLogger("quantcore")

Output = Literal["result", "module", "state_dict"]


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
    obj: object,
    dtype: str | torch.dtype | None = ...,
    *,
    output: Literal["result"] = ...,
    include: str | Iterable[str] | None = ...,
    exclude: str | Iterable[str] | None = ...,
    overrides: Iterable[Override | Mapping[str, Any]] | None = ...,
    config: ConfigInput = ...,
    plugin_manager: QuantcorePluginManager | None = ...,
    disable_plugins: Iterable[str] | None = ...,
    strict: bool | None = ...,
    log_level: str | None = ...,
    progress: Progress | None = ...,
    calibration: object = ...,
    max_error: float | None = ...,
    error_metric: str | Callable[[Any, Any], float] | None = ...,
    fallback: str | None = ...,
    smooth: bool | None = ...,
    smooth_alpha: float | None = ...,
) -> QuantizationResult: ...
@overload
def quantize(
    obj: object,
    dtype: str | torch.dtype | None = ...,
    *,
    output: Literal["module"],
    include: str | Iterable[str] | None = ...,
    exclude: str | Iterable[str] | None = ...,
    overrides: Iterable[Override | Mapping[str, Any]] | None = ...,
    config: ConfigInput = ...,
    plugin_manager: QuantcorePluginManager | None = ...,
    disable_plugins: Iterable[str] | None = ...,
    strict: bool | None = ...,
    log_level: str | None = ...,
    progress: Progress | None = ...,
    calibration: object = ...,
    max_error: float | None = ...,
    error_metric: str | Callable[[Any, Any], float] | None = ...,
    fallback: str | None = ...,
    smooth: bool | None = ...,
    smooth_alpha: float | None = ...,
) -> nn.Module: ...
@overload
def quantize(
    obj: object,
    dtype: str | torch.dtype | None = ...,
    *,
    output: Literal["state_dict"],
    include: str | Iterable[str] | None = ...,
    exclude: str | Iterable[str] | None = ...,
    overrides: Iterable[Override | Mapping[str, Any]] | None = ...,
    config: ConfigInput = ...,
    plugin_manager: QuantcorePluginManager | None = ...,
    disable_plugins: Iterable[str] | None = ...,
    strict: bool | None = ...,
    log_level: str | None = ...,
    progress: Progress | None = ...,
    calibration: object = ...,
    max_error: float | None = ...,
    error_metric: str | Callable[[Any, Any], float] | None = ...,
    fallback: str | None = ...,
    smooth: bool | None = ...,
    smooth_alpha: float | None = ...,
) -> dict[str, torch.Tensor]: ...
def quantize(
    obj: object,
    dtype: str | torch.dtype | None = None,
    *,
    output: Output = "result",
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    overrides: Iterable[Override | Mapping[str, Any]] | None = None,
    config: ConfigInput = None,
    plugin_manager: QuantcorePluginManager | None = None,
    disable_plugins: Iterable[str] | None = None,
    strict: bool | None = None,
    log_level: str | None = None,
    progress: Progress | None = None,
    calibration: object = None,
    max_error: float | None = None,
    error_metric: str | Callable[[Any, Any], float] | None = None,
    fallback: str | None = None,
    smooth: bool | None = None,
    smooth_alpha: float | None = None,
) -> QuantizationResult | nn.Module | dict[str, torch.Tensor]:
    """Quantize a model (``nn.Module``) or a state dict with dynamic quantization.

    Every setting left as None comes from the configuration files, else its default (see
    docs/configuration.md); a parameter always wins over a file.

    Args:
        obj: what to quantize. It is never modified.
        dtype: the scheme: ``"int8"`` (default) or ``"fp16"`` from the built-in plugins, or any
            scheme a plugin provides. ``torch.int8`` and ``torch.float16`` are accepted too.
        output: ``"result"`` for a :class:`QuantizationResult`, ``"module"`` or ``"state_dict"``
            for just that part.
        include: layer-name patterns (glob, or ``re:<regex>``); only matching layers are quantized.
        exclude: layer-name patterns to keep in float; a pattern matching a module excludes
            everything inside it.
        overrides: per-layer rules (:class:`quantcore.Override` or dicts with ``match``,
            ``layer_type``, ``dtype``, ``granularity``, ``symmetric``, ``observer``, ``skip``).
        config: a TOML file path, a mapping with the same keys, or a resolved
            :class:`quantcore.QuantizeConfig`; replaces ``$QUANTCORE_CONFIG`` and the user file.
        plugin_manager: the plugins to use; by default a fresh manager from installed entry points.
        disable_plugins: plugin (entry-point) or distribution names not to load.
        strict: turn third-party plugin failures, and patterns that match no layer, into errors.
        log_level: level of the ``"quantcore"`` logger during this call (restored afterwards).
        progress: called as ``progress(done, total, layer_name)`` while layers are converted.
        calibration: sample inputs (a batch, or a list/iterable of batches, as
            :func:`quantcore.compare` takes them). With them the report gives the output error
            measured on them, and the settings below act (see docs/accuracy.md).
        max_error: accuracy budget: the most sensitive layers are kept back (float, or
            ``fallback``) until the output error on ``calibration`` is within it.
        error_metric: what ``max_error`` bounds: ``"relative_l2"`` (default), ``"cosine"``
            (1 - cosine similarity) or ``metric(float_output, quantized_output) -> float``
            (averaged over batches).
        fallback: the scheme for layers kept back (``"fp16"``, say); default float.
        smooth: SmoothQuant-style outlier smoothing from ``calibration``, kept per layer group
            only where it lowers that group's error.
        smooth_alpha: its migration strength (default 0.5).

    Layers that cannot be quantized are kept in float and listed in the report as skipped.
    """
    if output not in ("result", "module", "state_dict"):
        raise ValueError(f"output must be 'result', 'module' or 'state_dict', not {output!r}")
    with preserved_global_state():
        effective = resolve_settings(
            config,
            dtype=dtype,
            include=include,
            exclude=exclude,
            overrides=overrides,
            disable_plugins=disable_plugins,
            strict=strict,
            log_level=log_level,
            max_error=max_error,
            error_metric=error_metric,
            fallback=fallback,
            smooth=smooth,
            smooth_alpha=smooth_alpha,
        )
    if calibration is not None or effective.max_error is not None or effective.smooth:
        from quantcore.accuracy import quantize_calibrated

        result = quantize_calibrated(obj, calibration, effective, plugin_manager, progress)
    else:
        with configured_job(obj, plugin_manager, effective) as job:
            result = job.run(job.adapted, progress)
    if output == "module":
        if result.module is None:
            raise ValueError(
                "output='module' needs a module input; a state dict gives output='state_dict'"
            )
        return result.module
    if output == "state_dict":
        return result.state_dict
    return result


def resolve_settings(
    config: ConfigInput = None,
    *,
    dtype: str | torch.dtype | None = None,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    overrides: Iterable[Override | Mapping[str, Any]] | None = None,
    disable_plugins: Iterable[str] | None = None,
    strict: bool | None = None,
    log_level: str | None = None,
    **accuracy: object,
) -> QuantizeConfig:
    """The effective configuration of a call: parameters over files over defaults.

    ``accuracy``: the accuracy settings (``max_error``, ``error_metric``, ``fallback``,
    ``smooth``, ``smooth_alpha``), None where not given."""
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype)  # "torch.qint8": the schemes declare which torch dtypes select them
    if dtype is not None and not isinstance(dtype, str):
        raise TypeError(f"dtype must be a scheme name such as 'int8' or 'fp16', not {dtype!r}")
    parameters = {
        "dtype": dtype,
        "include": _as_patterns(include),
        "exclude": _as_patterns(exclude),
        "overrides": None if overrides is None else list(overrides),
        "disable_plugins": None if disable_plugins is None else list(disable_plugins),
        "strict": strict,
        "log_level": log_level,
        **accuracy,
    }
    return resolve_config(config, parameters=parameters)


@contextmanager
def configured_job(
    obj: object,
    plugin_manager: QuantcorePluginManager | None,
    config: ConfigInput = None,
    **settings: Any,
) -> Iterator[QuantizationJob]:
    """Everything a quantizing call does before and around the work: resolve the settings,
    load plugins, adapt the input, set the log level, and leave torch's global state as it was."""
    with preserved_global_state():
        effective = resolve_settings(config, **settings)
        with _logger_level(effective.log_level):
            yield prepare_job(obj, effective, plugin_manager)


def _as_patterns(value: str | Iterable[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


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
    config: QuantizeConfig

    @property
    def selection(self) -> Selection:
        return Selection(self.config.include, self.config.exclude, self.config.overrides)

    def run(
        self, adapted: AdaptedInput, progress: Progress | None = None, *, log: bool = True
    ) -> QuantizationResult:
        scheme, registry, selection = self.scheme, self.registry, self.selection
        records: list[LayerRecord] = []
        module: nn.Module | None = None
        type_names: dict[str, tuple[str, ...]] = {}
        if adapted.module is not None:
            module, layers = quantize_module(
                adapted.module,
                scheme,
                registry,
                selection=selection,
                records=records,
                progress=progress,
            )
            state_dict = None  # read from the module when asked (QuantizationResult.state_dict)
            size_before, size_after = module_bytes(adapted.module), module_bytes(module)
            type_names = {
                name: (type(m).__name__, f"{type(m).__module__}.{type(m).__qualname__}")
                for name, m in adapted.module.named_modules()
            }
        elif adapted.state_dict is not None:
            state_dict, layers = quantize_state_dict(
                adapted.state_dict,
                scheme,
                registry,
                selection=selection,
                records=records,
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
                    tensors,
                    scheme,
                    registry,
                    selection=selection,
                    records=records,
                    progress=progress,
                )
                size_before += tensor_bytes(tensors.values())
                state_dict.update(part)
                layers.extend(part_layers)
                del tensors
            size_after = tensor_bytes(state_dict.values())
        if log:  # a streamed shard is only part of the input: checked once over all shards
            self.check_result(layers, type_names)
        manifest = Manifest(scheme.name, tuple(records), quantcore_version())
        if module is not None:
            attach_manifest(module, manifest)
            if adapted.finalize is not None:
                adapted.finalize(module, manifest)
        report = self.report(adapted, layers, size_before, size_after)
        if log:
            _log_report(report)
        return QuantizationResult(module, state_dict, report, manifest)

    def report(
        self,
        adapted: AdaptedInput,
        layers: Sequence[LayerReport],
        size_before: int,
        size_after: int,
    ) -> QuantizationReport:
        return QuantizationReport(
            scheme=self.scheme.name,
            input_description=adapted.description,
            layers=tuple(layers),
            size_before=size_before,
            size_after=size_after,
            notes=adapted.notes,
            plugins=tuple(
                name for name, plugin in self.manager.list_name_plugin() if plugin is not None
            ),
            config=self.config,
        )

    def check_result(
        self, layers: Sequence[LayerReport], type_names: Mapping[str, tuple[str, ...]]
    ) -> None:
        """Unused patterns warn (raise when strict); strict mode refuses an empty result."""
        config = self.config
        _check_selectors_used(config, layers, type_names)
        if config.strict and not any(layer.status == "quantized" for layer in layers):
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
    manager = _plugin_manager(plugin_manager, config.disable_plugins, config.strict)
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


def _check_selectors_used(
    config: QuantizeConfig,
    layers: Sequence[LayerReport],
    type_names: Mapping[str, tuple[str, ...]],
) -> None:
    """A pattern or override that matches no layer is usually a typo: warn (error when strict)."""
    names = [layer.name for layer in layers]
    unused: list[tuple[str, str, str]] = []  # (source, key, pattern)
    for key in ("include", "exclude"):
        for i, pattern in enumerate(getattr(config, key)):
            if not any(pattern_matches(pattern, name) for name in names):
                unused.append((config.source(key), f"{key}[{i}]", pattern))
    for o in config.overrides:
        hit = any(
            o.matches(
                layer.name,
                (*type_names.get(layer.name, (layer.layer_type,)), layer.layer_kind or ""),
            )
            for layer in layers
        )
        if not hit:
            unused.append((o.source, f"overrides[{o.index}]", o.match or o.layer_type or ""))
    shown = ", ".join(repr(n) for n in names[:8]) + (", ..." if len(names) > 8 else "")
    for source, key, pattern in unused:
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


@contextmanager
def preserved_global_state() -> Iterator[None]:
    """Leave torch's global settings as they were, whatever a plugin does or however it fails:
    thread count, default dtype and device, grad mode, the deterministic-algorithms flag and the
    CPU random generator."""
    threads = torch.get_num_threads()
    default_dtype = torch.get_default_dtype()
    default_device = torch.get_default_device()
    grad = torch.is_grad_enabled()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    rng = torch.random.get_rng_state()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        if torch.get_default_dtype() != default_dtype:
            torch.set_default_dtype(default_dtype)
        if torch.get_default_device() != default_device:
            # None removes the device context a plugin installed: back to torch's own default
            torch.set_default_device(None if default_device.type == "cpu" else default_device)
        torch.set_grad_enabled(grad)
        if (
            torch.are_deterministic_algorithms_enabled() != deterministic
            or torch.is_deterministic_algorithms_warn_only_enabled() != warn_only
        ):
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.random.set_rng_state(rng)


@contextmanager
def _logger_level(level: str | None) -> Iterator[None]:
    if level is None:
        yield
        return
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _log_report(report: QuantizationReport) -> None:
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


def list_plugins(plugin_manager: QuantcorePluginManager | None = None) -> list[PluginInfo]:
    """Every plugin quantcore sees: loaded, disabled or failed, and what each provides."""
    manager = plugin_manager or create_plugin_manager()
    return manager.plugin_infos()
