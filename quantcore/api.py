"""The call users make: :func:`quantize`; and :func:`list_plugins`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal, overload

import torch
from torch import nn

from quantcore.config import ConfigInput
from quantcore.convert import Progress
from quantcore.job import QuantizationResult, adapt_input, quantize_result
from quantcore.manifest import manifest_of
from quantcore.plugin_manager import PluginInfo, QuantcorePluginManager, create_plugin_manager
from quantcore.settings import Overrides, QuantizeSettings, Selectors

Output = Literal["result", "module", "state_dict"]

__all__ = ["QuantizationResult", "adapt_input", "list_plugins", "manifest_of", "quantize"]


@overload
def quantize(
    obj: object,
    dtype: str | torch.dtype | None = ...,
    *,
    output: Literal["result"] = ...,
    include: Selectors | None = ...,
    exclude: Selectors | None = ...,
    overrides: Overrides | None = ...,
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
    fuse_activations: bool | None = ...,
) -> QuantizationResult: ...
@overload
def quantize(
    obj: object,
    dtype: str | torch.dtype | None = ...,
    *,
    output: Literal["module"],
    include: Selectors | None = ...,
    exclude: Selectors | None = ...,
    overrides: Overrides | None = ...,
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
    fuse_activations: bool | None = ...,
) -> nn.Module: ...
@overload
def quantize(
    obj: object,
    dtype: str | torch.dtype | None = ...,
    *,
    output: Literal["state_dict"],
    include: Selectors | None = ...,
    exclude: Selectors | None = ...,
    overrides: Overrides | None = ...,
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
    fuse_activations: bool | None = ...,
) -> dict[str, torch.Tensor]: ...
def quantize(
    obj: object,
    dtype: str | torch.dtype | None = None,
    *,
    output: Output = "result",
    include: Selectors | None = None,
    exclude: Selectors | None = None,
    overrides: Overrides | None = None,
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
    fuse_activations: bool | None = None,
) -> QuantizationResult | nn.Module | dict[str, torch.Tensor]:
    """Quantize a model (``nn.Module``) or a state dict with dynamic quantization.

    The settings (``dtype``, ``include``, ``exclude``, ``overrides``, ``disable_plugins``,
    ``strict``, ``log_level``, ``fuse_activations`` and the accuracy settings ``max_error``,
    ``error_metric``, ``fallback``, ``smooth``, ``smooth_alpha``) are those of
    :class:`quantcore.QuantizeSettings`, which documents them; every one left as None comes from the configuration files, else its
    default (see docs/configuration.md); a parameter always wins over a file.

    Args:
        obj: what to quantize. It is never modified.
        output: ``"result"`` for a :class:`QuantizationResult`, ``"module"`` or ``"state_dict"``
            for just that part.
        config: a TOML file path, a mapping with the same keys, or a resolved
            :class:`quantcore.QuantizeConfig`; replaces ``$QUANTCORE_CONFIG`` and the user file.
        plugin_manager: the plugins to use; by default a fresh manager from installed entry points.
        progress: called as ``progress(done, total, layer_name)`` while layers are converted.
        calibration: sample inputs (a batch, or a list/iterable of batches, as
            :func:`quantcore.compare` takes them). With them the report gives the output error
            measured on them, and the accuracy settings act (see docs/accuracy.md).

    Layers that cannot be quantized are kept in float and listed in the report as skipped.
    """
    if output not in ("result", "module", "state_dict"):
        raise ValueError(f"output must be 'result', 'module' or 'state_dict', not {output!r}")
    settings = QuantizeSettings(
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
        fuse_activations=fuse_activations,
    )
    result = quantize_result(obj, settings.resolve(config), plugin_manager, progress, calibration)
    if output == "module":
        if result.module is None:
            raise ValueError(
                "output='module' needs a module input; a state dict gives output='state_dict'"
            )
        return result.module
    if output == "state_dict":
        return result.state_dict
    return result


def list_plugins(plugin_manager: QuantcorePluginManager | None = None) -> list[PluginInfo]:
    """Every plugin quantcore sees: loaded, disabled or failed, and what each provides."""
    manager = plugin_manager or create_plugin_manager()
    return manager.plugin_infos()
