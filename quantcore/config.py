"""Configuration: which settings a quantize() call uses, and where each one came from.

Layers, highest priority first (each setting is taken whole from the highest layer that sets it):

1. parameters of the call (``quantize(dtype=..., exclude=...)``, CLI options)
2. the explicitly named file: ``config=`` (path or mapping), else ``$QUANTCORE_CONFIG``
3. the ``[tool.quantcore]`` table of the nearest ``pyproject.toml`` (from the working directory up)
4. the user's file, ``$XDG_CONFIG_HOME/quantcore/config.toml`` or the platform's equivalent; read
   only when no file is named explicitly
5. defaults

Files are validated strictly: an unknown key, a wrong type or an unknown name is a
:class:`~quantcore.errors.ConfigError` naming the file, the key and what is allowed. Scheme and
observer names are checked against the loaded plugins by :func:`validate_names`, because plugins
define them.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Union

from quantcore.errors import (
    ConfigError,
    ConfigFileError,
    ConfigTypeError,
    ConfigValueError,
    UnknownConfigKeyError,
    UnknownSchemeError,
    describe_schemes,
)
from quantcore.specs import Granularity, LayerSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

if TYPE_CHECKING:
    from quantcore.registrations import Registry

CONFIG_ENV_VAR = "QUANTCORE_CONFIG"
PYPROJECT_TABLE = "tool.quantcore"
DEFAULT_SOURCE = "default"
PARAMETER_SOURCE = "parameter"
ENVIRONMENT_SOURCE = "environment"
REGEX_PREFIX = "re:"

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ERROR_METRICS = ("relative_l2", "cosine")
OVERRIDE_GRANULARITIES = (Granularity.PER_TENSOR.value, Granularity.PER_CHANNEL.value)

# key -> human description of the expected type (used in messages and docs)
SETTINGS: Mapping[str, str] = MappingProxyType(
    {
        "dtype": "string (a scheme name: int8, fp16, or a plugin's)",
        "include": "list of strings (layer-name patterns)",
        "exclude": "list of strings (layer-name patterns)",
        "overrides": "array of tables ([[overrides]])",
        "disable_plugins": "list of strings (plugin or distribution names)",
        "strict": "boolean",
        "log_level": f"string ({', '.join(LOG_LEVELS)})",
        # accuracy (docs/accuracy.md); they act only with calibration inputs
        "max_error": "number > 0 (accuracy budget on the outputs)",
        "error_metric": f"string ({', '.join(ERROR_METRICS)}; in Python also a callable)",
        "fallback": "string (scheme for layers the budget keeps back; default: float)",
        "smooth": "boolean (outlier smoothing from the calibration inputs)",
        "smooth_alpha": "number in [0, 1] (migration strength of smoothing)",
    }
)
SYNONYMS: Mapping[str, str] = MappingProxyType({"scheme": "dtype"})
OVERRIDE_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "match": "string (layer-name pattern: glob, or re:<regex>)",
        "layer_type": "string (module class name, qualified name or layer kind; glob allowed)",
        "dtype": "string (scheme name for this layer)",
        "granularity": f"string ({', '.join(OVERRIDE_GRANULARITIES)})",
        "symmetric": "boolean",
        "observer": "string (an observer name)",
        "skip": "boolean",
    }
)
_OVERRIDE_SETTINGS = ("dtype", "granularity", "symmetric", "observer", "skip")


@dataclass(frozen=True)
class Override:
    """A per-layer rule: layers matching ``match`` (name) and ``layer_type`` get these settings.

    Every matching override applies, in order; a later one wins for a field both set.
    ``granularity``, ``symmetric`` and ``observer`` concern the layer's weights.
    """

    match: str | None = None
    layer_type: str | None = None
    dtype: str | None = None
    granularity: Granularity | None = None
    symmetric: bool | None = None
    observer: str | None = None
    skip: bool | None = None
    source: str = PARAMETER_SOURCE
    index: int = 0

    def matches(self, name: str, type_names: Iterable[str]) -> bool:
        if self.match is not None and not pattern_matches(self.match, name):
            return False
        if self.layer_type is not None:
            return any(fnmatch.fnmatchcase(t, self.layer_type) for t in type_names)
        return True

    def settings(self) -> dict[str, object]:
        values = {
            "dtype": self.dtype,
            "granularity": self.granularity.value if self.granularity else None,
            "symmetric": self.symmetric,
            "observer": self.observer,
            "skip": self.skip,
        }
        return {k: v for k, v in values.items() if v is not None}

    def describe(self) -> str:
        """``overrides[0] (match 'head', layer_type 'Linear'): dtype=fp16``, as reports show it."""
        selectors = []
        if self.match is not None:
            selectors.append(f"match {self.match!r}")
        if self.layer_type is not None:
            selectors.append(f"layer_type {self.layer_type!r}")
        settings = ", ".join(f"{k}={_toml_value(v)}" for k, v in self.settings().items())
        return f"overrides[{self.index}] ({', '.join(selectors)}): {settings}"

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.match is not None:
            out["match"] = self.match
        if self.layer_type is not None:
            out["layer_type"] = self.layer_type
        out.update(self.settings())
        return out


@dataclass(frozen=True)
class ConfigFile:
    """A place quantcore looked for configuration, and whether it found any there."""

    role: str  # "config=", "QUANTCORE_CONFIG", "pyproject", "user config"
    path: str
    used: bool
    detail: str = ""


ConfigInput = Union[str, "os.PathLike[str]", Mapping[str, Any], "QuantizeConfig", None]


@dataclass(frozen=True)
class QuantizeConfig:
    """The effective settings of one quantize() call; ``sources`` says where each came from."""

    dtype: str | None = None  # None: the scheme the loaded plugins mark as default
    include: tuple[str, ...] = ()  # empty: every layer
    exclude: tuple[str, ...] = ()
    overrides: tuple[Override, ...] = ()
    disable_plugins: tuple[str, ...] = ()
    strict: bool = False
    log_level: str | None = None  # None: leave the "quantcore" logger as the caller set it
    max_error: float | None = None
    error_metric: str | Callable[[Any, Any], float] = "relative_l2"
    fallback: str | None = None
    smooth: bool = False
    smooth_alpha: float = 0.5
    sources: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType(dict.fromkeys(SETTINGS, DEFAULT_SOURCE))
    )
    files: tuple[ConfigFile, ...] = ()

    def source(self, key: str) -> str:
        return self.sources.get(key, DEFAULT_SOURCE)

    def value(self, key: str) -> object:
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every setting with its value and source, and the files consulted."""
        settings: dict[str, Any] = {}
        for key in SETTINGS:
            value: Any = getattr(self, key)
            if key == "overrides":
                value = [o.to_dict() | {"source": o.source} for o in self.overrides]
            elif callable(value):
                value = getattr(value, "__qualname__", repr(value))
            elif isinstance(value, tuple):
                value = list(value)
            settings[key] = {"value": value, "source": self.source(key)}
        return {
            "settings": settings,
            "files": [
                {"role": f.role, "path": f.path, "used": f.used, "detail": f.detail}
                for f in self.files
            ],
        }

    def non_default(self) -> list[str]:
        """Settings not left at their default, as ``key=value (source)`` strings."""
        return [
            f"{key}={_display(self, key)} ({self.source(key)})"
            for key in SETTINGS
            if self.source(key) != DEFAULT_SOURCE
        ]

    def describe(self) -> str:
        """The text ``quantcore config show`` prints."""
        lines = [
            "quantcore configuration (priority: parameter > config=/$QUANTCORE_CONFIG file > "
            "pyproject > user config file > default)"
        ]
        if self.files:
            lines.append("  files (highest priority first):")
            for f in reversed(self.files):
                state = "used" if f.used else (f.detail or "not found")
                lines.append(f"    {f.role:<16} {f.path} ({state})")
        lines.append("  settings:")
        width = max(len(k) for k in SETTINGS)
        for key in SETTINGS:
            if key == "overrides":
                count = f"{len(self.overrides)} rule(s)" if self.overrides else "none"
                lines.append(f"    {key:<{width}}  {count:<28} [{self.source(key)}]")
                lines += [f"      {o.describe()}" for o in self.overrides]
                continue
            lines.append(f"    {key:<{width}}  {_display(self, key):<28} [{self.source(key)}]")
        return "\n".join(lines)


def _display(config: QuantizeConfig, key: str) -> str:
    value = getattr(config, key)
    if key == "include" and not value:
        return "(every layer)"
    if key == "dtype" and value is None:
        return "(the plugins' default scheme)"
    if key == "log_level" and value is None:
        return "(logger unchanged)"
    if key == "overrides":
        return "; ".join(o.describe() for o in value) or "none"
    if value is None and key in ("max_error", "fallback"):
        return "none" if key == "max_error" else "float"
    if callable(value):
        return getattr(value, "__qualname__", repr(value))
    if isinstance(value, tuple):
        return ", ".join(value) if value else "none"
    return _toml_value(value)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# -- patterns --------------------------------------------------------------------------------


def pattern_matches(pattern: str, name: str) -> bool:
    """Whether ``pattern`` matches layer ``name`` or one of its parents (``encoder`` covers
    ``encoder.fc``). Glob by default; ``re:<regex>`` is a full-match regular expression."""
    parts = name.split(".") if name else [""]
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    if pattern.startswith(REGEX_PREFIX):
        regex = re.compile(pattern[len(REGEX_PREFIX) :])
        return any(regex.fullmatch(prefix) for prefix in prefixes)
    return any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes)


def first_match(patterns: Sequence[str], name: str) -> str | None:
    """The first of ``patterns`` that matches layer ``name`` (or a parent), else None."""
    for pattern in patterns:
        if pattern_matches(pattern, name):
            return pattern
    return None


# -- per-layer resolution --------------------------------------------------------------------


@dataclass(frozen=True)
class LayerDecision:
    """What the overrides decide for one layer."""

    overrides: tuple[Override, ...]
    skip: bool
    dtype: str | None
    notes: tuple[str, ...] = ()

    def describe(self) -> str | None:
        return "; ".join(o.describe() for o in self.overrides) or None


def decide_layer(
    overrides: Sequence[Override], name: str, type_names: Iterable[str]
) -> LayerDecision:
    """Combine the overrides matching a layer: later ones win for fields both set."""
    names = tuple(type_names)
    applied = tuple(o for o in overrides if o.matches(name, names))
    skip = False
    dtype = None
    for o in applied:
        if o.skip is not None:
            skip = o.skip
        if o.dtype is not None:
            dtype = o.dtype
    return LayerDecision(applied, skip, dtype)


def apply_overrides(spec: LayerSpec, overrides: Sequence[Override]) -> tuple[LayerSpec, list[str]]:
    """The scheme's LayerSpec with the overrides' weight settings applied, plus notes on those
    that cannot apply (an unscaled format such as fp16 has no granularity or observer)."""
    weight = spec.weight
    notes: list[str] = []
    for o in overrides:
        changes: dict[str, Any] = {}
        if o.granularity is not None:
            changes["granularity"] = o.granularity
        if o.symmetric is not None:
            changes["symmetric"] = o.symmetric
        if o.observer is not None:
            changes["observer"] = o.observer
        if not changes:
            continue
        if weight.granularity is Granularity.NONE:
            notes.append(
                f"overrides[{o.index}] {', '.join(sorted(changes))} ignored: the scheme stores "
                "weights without scales"
            )
            continue
        weight = replace(weight, **changes)
    return (replace(spec, weight=weight) if weight is not spec.weight else spec), notes


# -- reading and validating ------------------------------------------------------------------


def user_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/quantcore/config.toml`` or the platform's user configuration folder."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_CONFIG_HOME")
    if xdg:
        base = Path(xdg)
    elif sys.platform == "win32":
        base = Path(env.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path.home() / ".config"
    return base / "quantcore" / "config.toml"


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest ``pyproject.toml`` from ``start`` (the working directory) upwards."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _read_toml(path: Path, source: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data: dict[str, Any] = tomllib.load(handle)
            return data
    except FileNotFoundError:
        raise ConfigFileError(source, None, "the file does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(source, None, f"not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8; tomllib lets this one through
        raise ConfigFileError(source, None, f"not valid TOML (not UTF-8 text: {exc})") from None
    except (OSError, ValueError) as exc:  # unreadable, a folder, a NUL byte in the name
        raise ConfigFileError(source, None, f"cannot be read: {exc}") from None


def _type_name(value: object) -> str:
    names = {
        bool: "boolean",
        str: "string",
        int: "integer",
        float: "float",
        list: "list",
        dict: "table",
    }
    return names.get(type(value), type(value).__name__)


def _expect_str(value: object, source: str, key: str, expected: str) -> str:
    if not isinstance(value, str):
        raise ConfigTypeError(
            source, key, f"must be a {expected}, got {_type_name(value)} {value!r}"
        )
    if not value.strip():
        raise ConfigValueError(source, key, "must not be empty")
    return value


def _expect_bool(value: object, source: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigTypeError(
            source, key, f"must be a boolean (true or false), got {_type_name(value)} {value!r}"
        )
    return value


def _expect_str_list(value: object, source: str, key: str, *, allow_str: bool) -> tuple[str, ...]:
    if isinstance(value, str) and allow_str:
        value = [value]
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        hint = f" (write [{value!r}])".replace("'", '"') if isinstance(value, str) else ""
        raise ConfigTypeError(
            source, key, f"must be a list of strings, got {_type_name(value)} {value!r}{hint}"
        )
    items = []
    for i, item in enumerate(value):
        items.append(_expect_str(item, source, f"{key}[{i}]", "string"))
    return tuple(items)


def _check_patterns(patterns: Sequence[str], source: str, key: str) -> None:
    for i, pattern in enumerate(patterns):
        if pattern.startswith(REGEX_PREFIX):
            try:
                re.compile(pattern[len(REGEX_PREFIX) :])
            except re.error as exc:
                raise ConfigValueError(
                    source, f"{key}[{i}]", f"invalid regular expression {pattern!r}: {exc}"
                ) from None


def _check_keys(
    table: Mapping[str, Any], allowed: Iterable[str], source: str, prefix: str = ""
) -> None:
    allowed = tuple(allowed)
    for key in table:
        if key not in allowed:
            raise UnknownConfigKeyError(
                source, f"{prefix}{key}", "unknown key", allowed=allowed, got=key
            )


def _parse_override(raw: object, source: str, key: str, index: int) -> Override:
    if isinstance(raw, Override):
        raw = raw.to_dict()  # validated like a table, so a hand-built Override gets the same checks
    if not isinstance(raw, Mapping):
        raise ConfigTypeError(
            source,
            key,
            f"must be a table (match = ..., dtype = ...), got {_type_name(raw)} {raw!r}",
        )
    _check_keys(raw, OVERRIDE_KEYS, source, f"{key}.")
    values: dict[str, Any] = {}
    for name in ("match", "layer_type", "dtype", "observer"):
        if name in raw:
            values[name] = _expect_str(raw[name], source, f"{key}.{name}", "string")
    for name in ("symmetric", "skip"):
        if name in raw:
            values[name] = _expect_bool(raw[name], source, f"{key}.{name}")
    if "granularity" in raw:
        text = _expect_str(raw["granularity"], source, f"{key}.granularity", "string")
        if text not in OVERRIDE_GRANULARITIES:
            raise ConfigValueError(
                source,
                f"{key}.granularity",
                f"unknown weight granularity {text!r}",
                allowed=OVERRIDE_GRANULARITIES,
                got=text,
            )
        values["granularity"] = Granularity(text)
    if "match" not in values and "layer_type" not in values:
        raise ConfigValueError(
            source, key, "an override needs match (layer-name pattern) or layer_type, or both"
        )
    if not any(name in values for name in _OVERRIDE_SETTINGS):
        raise ConfigValueError(source, key, "the override sets nothing", allowed=_OVERRIDE_SETTINGS)
    if "match" in values:
        _check_patterns([values["match"]], source, f"{key}.match")
    return Override(source=source, index=index, **values)


def parse_settings(
    table: Mapping[str, Any], source: str, *, python: bool = False, key_prefix: str = ""
) -> dict[str, Any]:
    """Validate one layer of configuration (a file's table, a mapping, or parameters).

    ``python=True`` (parameters) also accepts a single string where a list of patterns is expected,
    tuples, and :class:`Override` objects. Returns only the settings this layer sets.
    """
    allowed = (*SETTINGS, *SYNONYMS)
    _check_keys(table, allowed, source, key_prefix)
    out: dict[str, Any] = {}
    for raw_key, value in table.items():
        key = SYNONYMS.get(raw_key, raw_key)
        shown = f"{key_prefix}{raw_key}"
        if key in out:
            raise ConfigValueError(
                source, shown, f"sets {key!r} a second time ({raw_key!r} is a synonym of {key!r})"
            )
        if key == "dtype":
            out[key] = _expect_str(value, source, shown, SETTINGS[key]).strip()
        elif key in ("include", "exclude"):
            patterns = _expect_str_list(value, source, shown, allow_str=python)
            _check_patterns(patterns, source, shown)
            out[key] = patterns
        elif key == "disable_plugins":
            out[key] = _expect_str_list(value, source, shown, allow_str=python)
        elif key == "strict":
            out[key] = _expect_bool(value, source, shown)
        elif key == "log_level":
            text = _expect_str(value, source, shown, SETTINGS[key]).upper()
            if text not in LOG_LEVELS:
                raise ConfigValueError(
                    source, shown, f"unknown log level {value!r}", allowed=LOG_LEVELS, got=text
                )
            out[key] = text
        elif key in _ACCURACY_KEYS:
            out[key] = _parse_accuracy(key, value, source, shown, python)
        elif key == "overrides":
            if isinstance(value, (Mapping, str, Override)) or not isinstance(value, (list, tuple)):
                raise ConfigTypeError(
                    source,
                    shown,
                    f"must be an array of tables ([[overrides]] in TOML, a list of dicts in "
                    f"Python), got {_type_name(value)} {value!r}",
                )
            out[key] = tuple(
                _parse_override(raw, source, f"{shown}[{i}]", i) for i, raw in enumerate(value)
            )
    return out


_ACCURACY_KEYS = ("max_error", "error_metric", "fallback", "smooth", "smooth_alpha")


def _parse_accuracy(key: str, value: object, source: str, shown: str, python: bool) -> object:
    """The accuracy settings: numbers in range, a known metric (or a callable from Python)."""
    if key == "smooth":
        return _expect_bool(value, source, shown)
    if key == "fallback":
        return _expect_str(value, source, shown, SETTINGS[key]).strip()
    if key == "error_metric":
        if python and callable(value):
            return value
        text = _expect_str(value, source, shown, SETTINGS[key])
        if text not in ERROR_METRICS:
            raise ConfigValueError(
                source, shown, f"unknown error metric {text!r}", allowed=ERROR_METRICS, got=text
            )
        return text
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigTypeError(
            source, shown, f"must be a {SETTINGS[key]}, got {_type_name(value)} {value!r}"
        )
    number = float(value)
    low_ok = number > 0 if key == "max_error" else number >= 0
    if not (low_ok and (key == "max_error" or number <= 1) and number == number):
        raise ConfigValueError(source, shown, f"must be a {SETTINGS[key]}, got {value!r}")
    return number


def read_config_file(path: str | os.PathLike[str], *, role: str = "config=") -> dict[str, Any]:
    """Read and validate a quantcore TOML file (top-level keys, no table around them)."""
    source = f"file {os.fspath(path)}"
    return parse_settings(_read_toml(Path(path), source), source)


def _read_pyproject(path: Path) -> dict[str, Any] | None:
    source = f"pyproject {path}"
    data = _read_toml(path, source)
    table = data.get("tool", {}).get("quantcore") if isinstance(data.get("tool"), dict) else None
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigTypeError(source, PYPROJECT_TABLE, "must be a table ([tool.quantcore])")
    return parse_settings(table, source, key_prefix=f"{PYPROJECT_TABLE}.")


def resolve_config(
    config: ConfigInput = None,
    *,
    parameters: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> QuantizeConfig:
    """The effective configuration: ``parameters`` (None values mean "not given") over the
    files (see the module docstring for the order) over defaults.

    ``config`` is a path to a TOML file, a mapping with the same keys, an already resolved
    :class:`QuantizeConfig` (no file is read then), or None to look for files.
    """
    env = os.environ if environ is None else environ
    layers: list[tuple[str, dict[str, Any]]] = []  # lowest priority first
    files: list[ConfigFile] = []
    base: QuantizeConfig | None = None

    if isinstance(config, QuantizeConfig):
        base = config
    else:
        explicit: tuple[str, Path] | None = None
        mapping_layer: dict[str, Any] | None = None
        if isinstance(config, Mapping):
            mapping_layer = parse_settings(config, "parameter config=", python=True)
        elif config is not None:
            if not isinstance(config, (str, os.PathLike)):
                raise ConfigTypeError(
                    PARAMETER_SOURCE,
                    "config",
                    f"must be a path, a mapping or a QuantizeConfig, got {type(config).__name__}",
                )
            explicit = ("config=", Path(config).expanduser().absolute())
        elif env.get(CONFIG_ENV_VAR, "").strip():
            explicit = (CONFIG_ENV_VAR, Path(env[CONFIG_ENV_VAR].strip()).expanduser().absolute())

        if explicit is None and mapping_layer is None:
            user = user_config_path(env)
            if user.is_file():
                layers.append((f"file {user}", read_config_file(user)))
            files.append(ConfigFile("user config", str(user), user.is_file()))
        pyproject = find_pyproject(Path(cwd) if cwd is not None else None)
        if pyproject is not None:
            table = _read_pyproject(pyproject)
            if table is not None:
                layers.append((f"pyproject {pyproject}", table))
            files.append(
                ConfigFile(
                    "pyproject",
                    str(pyproject),
                    table is not None,
                    "" if table is not None else "no [tool.quantcore] table",
                )
            )
        if explicit is not None:
            role, path = explicit
            if not path.is_file():
                how = "config= / --config" if role == "config=" else f"${CONFIG_ENV_VAR}"
                raise ConfigFileError(
                    f"file {path}",
                    None,
                    f"the configuration file named by {how} does not exist; fix the path or "
                    f"remove {how}",
                )
            layers.append((f"file {path}", read_config_file(path, role=role)))
            files.append(ConfigFile(role, str(path), True))
        if mapping_layer is not None:
            layers.append(("parameter config=", mapping_layer))
    if parameters:
        given = {k: v for k, v in parameters.items() if v is not None}
        layers.append((PARAMETER_SOURCE, parse_settings(given, PARAMETER_SOURCE, python=True)))

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if base is not None:
        values = {key: getattr(base, key) for key in SETTINGS}
        sources = {key: base.source(key) for key in SETTINGS}
        files = list(base.files)
    for source, layer in layers:
        for key, value in layer.items():
            values[key] = value
            sources[key] = source

    if base is None:
        env_disabled = _disabled_from(env)
        if env_disabled:
            chosen = tuple(values.get("disable_plugins", ()))
            values["disable_plugins"] = chosen + tuple(p for p in env_disabled if p not in chosen)
            previous = sources.get("disable_plugins")
            sources["disable_plugins"] = (
                f"{previous} + {ENVIRONMENT_SOURCE}" if previous else ENVIRONMENT_SOURCE
            )
    return QuantizeConfig(
        **values,
        sources=MappingProxyType({key: sources.get(key, DEFAULT_SOURCE) for key in SETTINGS}),
        files=tuple(files),
    )


def _disabled_from(env: Mapping[str, str]) -> tuple[str, ...]:
    from quantcore.plugin_manager import DISABLE_ENV_VAR

    raw = env.get(DISABLE_ENV_VAR, "")
    return tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))


def load_config(
    path: str | os.PathLike[str] | None = None, *, cwd: str | os.PathLike[str] | None = None
) -> QuantizeConfig:
    """The configuration files alone (no parameters): what the CLI's ``--config FILE`` reads.

    Pass the result to ``quantize(config=...)``; parameters given there still win.
    """
    return resolve_config(path, cwd=cwd)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--config FILE`` option; pass its value to :func:`effective_config` or ``quantize``."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"TOML configuration file (default: ${CONFIG_ENV_VAR}, else the user config file "
        f"{user_config_path()}); settings given as options still win",
    )


def effective_config(
    config: ConfigInput = None, *, parameters: Mapping[str, Any] | None = None
) -> QuantizeConfig:
    """Resolve the configuration and check its names against the plugins it would load: what
    ``quantcore config show`` prints, and what a quantize() call with the same arguments uses."""
    from quantcore.plugin_manager import create_plugin_manager

    resolved = resolve_config(config, parameters=parameters)
    manager = create_plugin_manager(disable=resolved.disable_plugins, strict=resolved.strict)
    registry = manager.registry()
    validate_names(resolved, registry)
    if resolved.dtype is None:
        resolved = replace(resolved, dtype=registry.default_scheme().name)
    return resolved


# -- validation against the loaded plugins ---------------------------------------------------


def validate_names(config: QuantizeConfig, registry: Registry) -> None:
    """Check scheme and observer names against what the loaded plugins provide.

    A name given as a parameter (or the built-in default) raises the usual
    :class:`UnknownSchemeError`; a name from a file raises :class:`ConfigValueError` naming the
    file and key.
    """
    if config.dtype is not None:
        _check_scheme(config.dtype, config.source("dtype"), "dtype", registry)
    if config.fallback is not None:
        _check_scheme(config.fallback, config.source("fallback"), "fallback", registry)
    for o in config.overrides:
        key = f"overrides[{o.index}]"
        if o.dtype is not None:
            _check_scheme(o.dtype, o.source, f"{key}.dtype", registry)
        if o.observer is not None and o.observer not in registry.observers:
            raise ConfigValueError(
                o.source,
                f"{key}.observer",
                f"unknown observer {o.observer!r}",
                allowed=[
                    f"{n!r} (from {registry.provider('observer', n)})"
                    for n in sorted(registry.observers)
                ]
                or ["none (no observer plugin loaded)"],
                got=o.observer,
                choices=list(registry.observers),
            )


def _check_scheme(name: str, source: str, key: str, registry: Registry) -> None:
    try:
        registry.scheme(name)
    except UnknownSchemeError as exc:
        if source in (PARAMETER_SOURCE, DEFAULT_SOURCE):
            raise
        raise ConfigValueError(
            source,
            key,
            f"unknown scheme {name!r}",
            allowed=[describe_schemes(exc.available, exc.aliases)]
            if exc.available
            else ["none (no scheme plugin is loaded)"],
            got=name,
            choices=[*exc.available, *(a for v in exc.aliases.values() for a in v)],
        ) from None


def log_level_number(level: str) -> int:
    return int(logging.getLevelName(level))


__all__ = [
    "CONFIG_ENV_VAR",
    "ConfigError",
    "add_config_argument",
    "effective_config",
    "ConfigFile",
    "LayerDecision",
    "Override",
    "QuantizeConfig",
    "apply_overrides",
    "decide_layer",
    "first_match",
    "find_pyproject",
    "load_config",
    "parse_settings",
    "pattern_matches",
    "read_config_file",
    "resolve_config",
    "user_config_path",
    "validate_names",
]
