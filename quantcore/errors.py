"""quantcore's exception and warning hierarchy.

Every error quantcore raises on purpose derives from :class:`QuantcoreError`, so callers can catch one
type. Messages name the problem and the fix; the attributes carry the same facts for programs.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean ...?)' suffix for error messages, or '' when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


class QuantcoreError(Exception):
    """Base class of every error raised by quantcore."""


class PluginError(QuantcoreError):
    """A plugin could not be loaded or provided something unusable."""


class PluginLoadError(PluginError):
    """A plugin failed to import or its hook raised (raised for first-party plugins and in strict mode)."""

    def __init__(self, plugin: str, distribution: str, error: BaseException | str) -> None:
        self.plugin = plugin
        self.distribution = distribution
        self.error = error
        super().__init__(
            f"plugin {plugin!r} from distribution {distribution!r} failed: {error}. "
            f"Disable it with QUANTCORE_DISABLE_PLUGINS={plugin} or disable_plugins=[{plugin!r}], "
            "or reinstall the distribution."
        )


class InvalidRegistrationError(PluginError):
    """A hook yielded something that is not the registration type its hook specification promises."""


class PluginConflictError(PluginError):
    """Two plugins registered the same name for the same extension point (a scheme's aliases and
    torch dtypes count as its names), or claimed what only one may have (the default scheme, the
    reference kernel backend of an op and format)."""

    def __init__(
        self, kind: str, name: str, first: str, second: str, *, claim: str | None = None
    ) -> None:
        self.kind = kind
        self.name = name
        self.providers = (first, second)
        what = claim or f"{kind} {name!r} is registered twice"
        super().__init__(
            f"{what}: by {first} and by {second}. "
            "Disable one of them (QUANTCORE_DISABLE_PLUGINS or disable_plugins=...)."
        )


class UnknownSchemeError(QuantcoreError, ValueError):
    """The requested dtype/scheme is not provided by any loaded plugin."""

    def __init__(
        self,
        name: str,
        available: dict[str, str],
        aliases: Mapping[str, Iterable[str]] | None = None,
        hint: str = "",
    ) -> None:
        self.name = name
        self.available = dict(available)
        self.aliases = {n: tuple(a) for n, a in (aliases or {}).items()}
        self.hint = hint
        if not available:
            detail = (
                "no quantization schemes are available because no quantcore plugin is loaded. "
                "Reinstall quantcore (its built-in plugins register through entry points) and check "
                "that QUANTCORE_DISABLE_PLUGINS does not disable them"
            )
        else:
            detail = f"available: {describe_schemes(available, self.aliases)}" + did_you_mean(
                name, [*available, *(a for names in self.aliases.values() for a in names)]
            )
        head = f"unknown dtype/scheme {name!r}" if name else "no dtype/scheme given"
        super().__init__(f"{head}: {detail}" + (f". {hint}" if hint else ""))


def describe_schemes(providers: Mapping[str, str], aliases: Mapping[str, Iterable[str]]) -> str:
    """``'int8' (aliases: qint8; from plugin ...)`` for every scheme, for error messages."""
    parts = []
    for name, provider in sorted(providers.items()):
        alias_text = ", ".join(aliases.get(name, ()))
        prefix = f"aliases: {alias_text}; " if alias_text else ""
        parts.append(f"{name!r} ({prefix}from {provider})")
    return ", ".join(parts)


class UnknownObserverError(QuantcoreError, ValueError):
    """A scheme or override names an observer that no loaded plugin provides."""

    def __init__(self, name: str, available: Iterable[str]) -> None:
        self.name = name
        self.available = sorted(available)
        super().__init__(
            f"unknown observer {name!r}; available: {', '.join(self.available) or 'none'}"
            f"{did_you_mean(name, self.available)}"
        )


class UnsupportedInputError(QuantcoreError, TypeError):
    """No input adapter accepts the object passed to :func:`quantcore.quantize`.

    ``tried`` names the adapters asked, ``reasons`` why some of them declined, and the message
    ends with what each loaded adapter would accept.
    """

    def __init__(
        self,
        received: str,
        tried: Iterable[str],
        hint: str = "",
        reasons: Mapping[str, str] | None = None,
    ) -> None:
        self.received = received
        self.tried = tuple(tried)
        self.reasons = dict(reasons or {})
        tried_text = (
            ", ".join(
                f"{name} ({self.reasons[name]})" if name in self.reasons else name
                for name in self.tried
            )
            if self.tried
            else "none (no input adapter is loaded)"
        )
        super().__init__(
            f"cannot quantize {received}: no input adapter accepts it (tried: {tried_text}). "
            + (hint or "Pass a torch.nn.Module or a state dict (a mapping of names to tensors).")
        )


class CheckpointError(QuantcoreError):
    """A checkpoint file or folder cannot be read: missing, corrupt, or an invalid shard index."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle needs arbitrary code to load; quantcore refuses it and never runs that code."""


class MissingDependencyError(QuantcoreError, ImportError):
    """An optional dependency (a quantcore extra) is needed for what was asked."""

    def __init__(self, what: str, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{what} needs the optional package {package!r}, which is not installed. "
            f"Install it with: pip install 'quantcore[{extra}]'"
        )


class SerializationError(QuantcoreError):
    """A quantized model cannot be saved, or a quantcore file cannot be rebuilt into a model."""


class IncompatibleFormatError(SerializationError):
    """A quantcore file was written in a format version this quantcore cannot read."""


class NothingToQuantizeError(QuantcoreError):
    """Raised only where the caller asked for it (strict selection); normally an empty plan is reported."""


class LayerSkipped(QuantcoreError):
    """Raised by a layer mapper or scheme to say this one layer cannot be quantized, and why.

    quantcore catches it, keeps the layer in float, and lists it as skipped with ``reason``.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class LayerQuantizationError(QuantcoreError):
    """Quantizing one layer failed unexpectedly. The caller's model is untouched."""

    def __init__(self, layer: str, layer_type: str, cause: BaseException) -> None:
        self.layer = layer
        self.layer_type = layer_type
        self.cause = cause
        super().__init__(
            f"quantizing layer {layer or '<root>'!r} ({layer_type}) failed: "
            f"{type(cause).__name__}: {cause}. The original model was not modified; exclude this "
            f"layer (exclude=[{layer!r}]) to quantize the rest."
        )


class AccuracyError(QuantcoreError, ValueError):
    """Measuring accuracy is impossible as asked: sample inputs quantcore cannot read, two models
    that do not match, an accuracy budget without calibration inputs or without a model to run."""


class ConfigError(QuantcoreError, ValueError):
    """A configuration value (from a file, a pyproject table or a parameter) is unusable.

    ``source`` says where the value came from (``"file /path/config.toml"``, ``"parameter"``),
    ``key`` which setting (``"overrides[2].granularity"``), ``allowed`` what would be accepted.
    """

    def __init__(
        self,
        source: str,
        key: str | None,
        problem: str,
        allowed: Sequence[str] = (),
        got: str = "",
        choices: Iterable[str] | None = None,
    ) -> None:
        self.source = source
        self.key = key
        self.allowed = tuple(allowed)
        self.problem = problem
        where = f"{source}: key {key!r}" if key else source
        text = f"{where}: {problem}"
        if self.allowed:
            text += f"; allowed: {', '.join(self.allowed)}"
        if got:
            text += did_you_mean(got, self.allowed if choices is None else choices)
        super().__init__(text)


class ConfigFileError(ConfigError):
    """The configuration file cannot be found, read or parsed as TOML."""


class UnknownConfigKeyError(ConfigError):
    """The configuration names a setting quantcore does not have (often a typo)."""


class ConfigTypeError(ConfigError, TypeError):
    """A configuration value has the wrong type (a string where a list is expected, say)."""


class ConfigValueError(ConfigError):
    """A configuration value has the right type but is not allowed: an unknown scheme, observer,
    granularity or log level, an invalid regular expression, or a pattern that matches no layer
    in strict mode."""


class QuantcoreWarning(UserWarning):
    """Base class of quantcore's warnings."""


class PluginLoadWarning(QuantcoreWarning):
    """A third-party plugin was skipped because it failed to load or misbehaved."""


__all__ = [
    "AccuracyError",
    "CheckpointError",
    "ConfigError",
    "ConfigFileError",
    "ConfigTypeError",
    "ConfigValueError",
    "IncompatibleFormatError",
    "InvalidRegistrationError",
    "LayerQuantizationError",
    "LayerSkipped",
    "MissingDependencyError",
    "NothingToQuantizeError",
    "PluginConflictError",
    "PluginError",
    "PluginLoadError",
    "PluginLoadWarning",
    "QuantcoreError",
    "QuantcoreWarning",
    "SerializationError",
    "UnknownConfigKeyError",
    "UnknownObserverError",
    "UnknownSchemeError",
    "UnsafeCheckpointError",
    "UnsupportedInputError",
    "did_you_mean",
]
