"""The settings of a quantizing call, typed, as the caller gives them.

:func:`quantcore.quantize`, :func:`quantcore.quantize_to_file` and ``quantcore quantize`` each
build one :class:`QuantizeSettings` from their arguments and hand it on whole, so a setting
reaches the work from every entry point or from none (a test checks that all three accept every
field). Resolving it against configuration files gives the :class:`~quantcore.QuantizeConfig`
the work runs with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeAlias

import torch
from torch import nn

from quantcore.config import ConfigInput, QuantizeConfig, resolve_config
from quantcore.selectors import LayerFilter, Override

Selectors: TypeAlias = str | LayerFilter | Iterable[str | LayerFilter]
OverrideValue: TypeAlias = Mapping[str, Any] | str | torch.dtype | None
Overrides: TypeAlias = (
    Iterable[Override | Mapping[str, Any]]
    | Mapping[str | LayerFilter | type[nn.Module], OverrideValue]
)


@dataclass(frozen=True)
class QuantizeSettings:
    """What a caller asks of one quantizing call; None means "not given": a configuration file
    or the default decides (docs/configuration.md).

    Args:
        dtype: the scheme: a name or alias (``"int8"``, ``"fp16"``, a plugin's), or a torch dtype
            a scheme declares (``torch.qint8``, ``torch.int8``, ``torch.float16``). Default: the
            scheme the loaded plugins mark as default (int8).
        include: layer-name patterns (glob, or ``re:<regex>``) or callables
            ``(name, module) -> bool``; only matching layers are quantized.
        exclude: the same, for layers to keep in float; matching a module excludes everything
            inside it.
        overrides: per-layer rules: a list of :class:`quantcore.Override` or dicts with
            ``match``, ``layer_type``, ``dtype``, ``granularity``, ``group_size``,
            ``symmetric``, ``observer``, ``skip``; or one dict of selector -> settings
            (``{"lm_head": None, "encoder.*": "fp16", nn.Embedding: {"skip": True}}``).
        disable_plugins: plugin (entry-point) or distribution names not to load.
        strict: turn third-party plugin failures, and patterns that match no layer, into errors.
        log_level: level of the ``"quantcore"`` logger during the call (restored afterwards).
        max_error: accuracy budget: the most sensitive layers are kept back (float, or
            ``fallback``) until the output error on the calibration inputs is within it.
        error_metric: what ``max_error`` bounds: ``"relative_l2"`` (default), ``"cosine"``
            (1 - cosine similarity) or ``metric(float_output, quantized_output) -> float``
            (averaged over batches).
        fallback: the scheme for layers kept back (``"fp16"``, say); default float.
        smooth: SmoothQuant-style outlier smoothing from the calibration inputs, kept per layer
            group only where it lowers that group's error.
        smooth_alpha: its migration strength (default 0.5).
        fuse_activations: let a quantized linear layer run the GELU/ReLU/SiLU that directly follows
            it inside its kernel (default True; docs/configuration.md says where it applies).

    The accuracy settings (docs/accuracy.md) act only with calibration inputs, which are data,
    not a setting: ``quantize(calibration=...)``, ``--calibration FILE``.
    """

    dtype: str | torch.dtype | None = None
    include: Selectors | None = None
    exclude: Selectors | None = None
    overrides: Overrides | None = None
    disable_plugins: Iterable[str] | None = None
    strict: bool | None = None
    log_level: str | None = None
    max_error: float | None = None
    error_metric: str | Callable[[Any, Any], float] | None = None
    fallback: str | torch.dtype | None = None
    smooth: bool | None = None
    smooth_alpha: float | None = None
    fuse_activations: bool | None = None

    def __post_init__(self) -> None:
        if self.dtype is not None and not isinstance(self.dtype, (str, torch.dtype)):
            raise TypeError(
                f"dtype must be a scheme name such as 'int8' or 'fp16', or a torch dtype, "
                f"not {self.dtype!r}"
            )

    def given(self) -> dict[str, Any]:
        """The settings the caller gave (not None), by name."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("include", "exclude", "disable_plugins"):
            value = values[key]
            if value is not None and not isinstance(value, str) and not callable(value):
                values[key] = list(value)  # a generator is read once, here
        if values["overrides"] is not None and not isinstance(values["overrides"], Mapping):
            values["overrides"] = list(values["overrides"])
        return {key: value for key, value in values.items() if value is not None}

    def kwargs(self) -> dict[str, Any]:
        """Every field by name, for ``quantcore.quantize(obj, **settings.kwargs())``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def resolve(self, config: ConfigInput = None) -> QuantizeConfig:
        """The effective configuration: these settings over the files (``config``) over defaults."""
        return resolve_config(config, parameters=self.given())
