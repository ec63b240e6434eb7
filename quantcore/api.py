"""The one call users make: :func:`quantize`."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, overload

import torch
from torch import nn

from quantcore.errors import UnsupportedInputError
from quantcore.orchestrate import module_bytes, quantize_module, quantize_state_dict, tensor_bytes
from quantcore.plugin_manager import (
    PluginInfo,
    QuantcorePluginManager,
    Registry,
    create_plugin_manager,
)
from quantcore.registrations import AdaptedInput
from quantcore.report import QuantizationReport

logger = logging.getLogger("quantcore")

Output = Literal["result", "module", "state_dict"]

_TORCH_DTYPE_NAMES = {torch.int8: "int8", torch.float16: "fp16"}


@dataclass(frozen=True)
class QuantizationResult:
    """The quantized model, its state dict, and the report of what happened to every layer.

    ``module`` is None when the input was a state dict.
    """

    module: nn.Module | None
    state_dict: dict[str, torch.Tensor]
    report: QuantizationReport


def _describe(obj: object) -> str:
    if isinstance(obj, Mapping):
        return f"a {type(obj).__name__} with {len(obj)} entries"
    return f"an object of type {type(obj).__module__}.{type(obj).__qualname__}"


def adapt_input(obj: object, registry: Registry) -> AdaptedInput:
    """Run the first input adapter that accepts ``obj``."""
    tried = []
    for adapter in registry.input_adapters:
        tried.append(adapter.name)
        if adapter.accepts(obj):
            return adapter.adapt(obj)
    raise UnsupportedInputError(_describe(obj), tried)


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
    dtype: str | torch.dtype = ...,
    *,
    output: Literal["result"] = ...,
    exclude: Iterable[str] = ...,
    plugin_manager: QuantcorePluginManager | None = ...,
    disable_plugins: Iterable[str] | None = ...,
    strict: bool = ...,
) -> QuantizationResult: ...
@overload
def quantize(
    obj: object,
    dtype: str | torch.dtype = ...,
    *,
    output: Literal["module"],
    exclude: Iterable[str] = ...,
    plugin_manager: QuantcorePluginManager | None = ...,
    disable_plugins: Iterable[str] | None = ...,
    strict: bool = ...,
) -> nn.Module: ...
@overload
def quantize(
    obj: object,
    dtype: str | torch.dtype = ...,
    *,
    output: Literal["state_dict"],
    exclude: Iterable[str] = ...,
    plugin_manager: QuantcorePluginManager | None = ...,
    disable_plugins: Iterable[str] | None = ...,
    strict: bool = ...,
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

    Layers that cannot be quantized are kept in float and listed in the report as skipped.
    """
    if output not in ("result", "module", "state_dict"):
        raise ValueError(f"output must be 'result', 'module' or 'state_dict', not {output!r}")
    scheme_name = (
        _TORCH_DTYPE_NAMES.get(dtype, str(dtype)) if isinstance(dtype, torch.dtype) else dtype
    )
    if not isinstance(scheme_name, str):
        raise TypeError(f"dtype must be a scheme name such as 'int8' or 'fp16', not {dtype!r}")
    patterns = [exclude] if isinstance(exclude, str) else list(exclude)
    manager = _plugin_manager(plugin_manager, disable_plugins, strict)
    registry = manager.registry()
    scheme = registry.scheme(scheme_name)
    adapted = adapt_input(obj, registry)

    if adapted.module is not None:
        module, layers = quantize_module(adapted.module, scheme, registry, exclude=patterns)
        state_dict = module.state_dict()
        size_before, size_after = module_bytes(adapted.module), module_bytes(module)
    else:
        assert adapted.state_dict is not None
        module = None
        state_dict, layers = quantize_state_dict(
            adapted.state_dict, scheme, registry, exclude=patterns
        )
        size_before = tensor_bytes(adapted.state_dict.values())
        size_after = tensor_bytes(state_dict.values())

    report = QuantizationReport(
        scheme=scheme.name,
        input_description=adapted.description,
        layers=tuple(layers),
        size_before=size_before,
        size_after=size_after,
        notes=adapted.notes,
        plugins=tuple(name for name, plugin in manager.list_name_plugin() if plugin is not None),
    )
    _log_report(report)
    if output == "module":
        if module is None:
            raise ValueError(
                "output='module' needs a module input; a state dict gives output='state_dict'"
            )
        return module
    if output == "state_dict":
        return state_dict
    return QuantizationResult(module=module, state_dict=state_dict, report=report)


def _log_report(report: QuantizationReport) -> None:
    if not report.quantized:
        logger.warning(
            "nothing was quantized with scheme %r: no layer of the input is handled by a loaded "
            "layer mapper (see the report for every layer and the reason)",
            report.scheme,
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
