"""Reading and validating configuration: where the files are, what a valid setting looks like.

Every value from a file, a mapping or a parameter goes through :func:`parse_settings`, which
refuses unknown keys, wrong types and unknown fixed values with a :class:`ConfigError` naming
the source and the key. Scheme and observer names are checked later, against the loaded plugins
(:func:`quantcore.config.validate_names`).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import torch
from torch import nn

from quantcore.errors import (
    ConfigFileError,
    ConfigTypeError,
    ConfigValueError,
    UnknownConfigKeyError,
)
from quantcore.selectors import REGEX_PREFIX, Override, Selector
from quantcore.specs import Granularity

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

PYPROJECT_TABLE = "tool.quantcore"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ERROR_METRICS = ("relative_l2", "cosine")
OVERRIDE_GRANULARITIES = tuple(
    g.value for g in (Granularity.PER_TENSOR, Granularity.PER_CHANNEL, Granularity.PER_GROUP)
)

# key -> human description of the expected type (used in messages and docs); the keys are the
# fields of quantcore.QuantizeSettings (a test checks)
SETTINGS: Mapping[str, str] = MappingProxyType(
    {
        "dtype": "string (a scheme name or alias a plugin provides)",
        "include": "list of strings (layer-name patterns)",
        "exclude": "list of strings (layer-name patterns)",
        "overrides": "array of tables ([[overrides]]) or a table of pattern -> settings",
        "disable_plugins": "list of strings (plugin or distribution names)",
        "strict": "boolean",
        "log_level": f"string ({', '.join(LOG_LEVELS)})",
        # accuracy (docs/accuracy.md); they act only with calibration inputs
        "max_error": "number > 0 (accuracy budget on the outputs)",
        "error_metric": f"string ({', '.join(ERROR_METRICS)}; in Python also a callable)",
        "fallback": "string (scheme for layers the budget keeps back; default: float)",
        "smooth": "boolean (outlier smoothing from the calibration inputs)",
        "smooth_alpha": "number in [0, 1] (migration strength of smoothing)",
        "fuse_activations": "boolean (GELU/ReLU/SiLU after a quantized linear run in its kernel)",
    }
)
_ACCURACY_KEYS = ("max_error", "error_metric", "fallback", "smooth", "smooth_alpha")
SYNONYMS: Mapping[str, str] = MappingProxyType({"scheme": "dtype"})
OVERRIDE_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "match": "string (layer-name pattern: glob, or re:<regex>)",
        "layer_type": "string (module class name, qualified name or layer kind; glob allowed)",
        "dtype": "string (scheme name for this layer)",
        "granularity": f"string ({', '.join(OVERRIDE_GRANULARITIES)})",
        "group_size": "integer (elements per group of per_group weights)",
        "symmetric": "boolean",
        "observer": "string (an observer name)",
        "skip": "boolean",
    }
)
_OVERRIDE_SETTINGS = ("dtype", "granularity", "group_size", "symmetric", "observer", "skip")


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


def _check_pattern(pattern: str, source: str, key: str) -> None:
    if pattern.startswith(REGEX_PREFIX):
        try:
            re.compile(pattern[len(REGEX_PREFIX) :])
        except re.error as exc:
            raise ConfigValueError(
                source, key, f"invalid regular expression {pattern!r}: {exc}"
            ) from None


def _expect_selector(value: object, source: str, key: str, python: bool) -> Selector:
    """A layer-name pattern; in Python also a callable ``(name, module) -> bool``."""
    if python and callable(value) and not isinstance(value, str):
        return cast(Selector, value)
    what = "string (a layer-name pattern)" + (
        " or a callable (name, module) -> bool" if python else ""
    )
    pattern = _expect_str(value, source, key, what)
    _check_pattern(pattern, source, key)
    return pattern


def _expect_selectors(value: object, source: str, key: str, python: bool) -> tuple[Selector, ...]:
    """A list of selectors; in Python also one pattern or callable on its own."""
    if python and (isinstance(value, str) or callable(value)):
        value = [value]
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        hint = f" (write [{value!r}])".replace("'", '"') if isinstance(value, str) else ""
        raise ConfigTypeError(
            source, key, f"must be a list of strings, got {_type_name(value)} {value!r}{hint}"
        )
    return tuple(
        _expect_selector(item, source, f"{key}[{i}]", python) for i, item in enumerate(value)
    )


def _check_keys(
    table: Mapping[str, Any], allowed: Iterable[str], source: str, prefix: str = ""
) -> None:
    allowed = tuple(allowed)
    for key in table:
        if key not in allowed:
            raise UnknownConfigKeyError(
                source, f"{prefix}{key}", "unknown key", allowed=allowed, got=key
            )


def _expect_group_size(value: object, source: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigTypeError(source, key, f"must be an integer, got {_type_name(value)} {value!r}")
    if value < 1:
        raise ConfigValueError(source, key, f"must be at least 1, not {value}")
    return value


def _expect_dtype(value: object, source: str, key: str, expected: str, python: bool) -> str:
    """A scheme name; in Python also a torch dtype (``torch.qint8``), kept as its text."""
    if python and isinstance(value, torch.dtype):
        return str(value)
    return _expect_str(value, source, key, expected).strip()


def _override_granularity(raw: Mapping[str, Any], source: str, key: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if "group_size" in raw:
        values["group_size"] = _expect_group_size(raw["group_size"], source, f"{key}.group_size")
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
        if text == Granularity.PER_GROUP.value and "group_size" not in values:
            raise ConfigValueError(
                source, f"{key}.granularity", "per_group needs group_size (elements per group)"
            )
        if text != Granularity.PER_GROUP.value and "group_size" in values:
            raise ConfigValueError(
                source, f"{key}.group_size", f"group_size goes with per_group, not {text}"
            )
    return values


def _parse_override(
    raw: object, source: str, key: str, index: int, *, python: bool = False
) -> Override:
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
    if "match" in raw:
        values["match"] = _expect_selector(raw["match"], source, f"{key}.match", python)
    for name in ("layer_type", "observer"):
        if name in raw:
            values[name] = _expect_str(raw[name], source, f"{key}.{name}", "string")
    if "dtype" in raw:
        values["dtype"] = _expect_dtype(raw["dtype"], source, f"{key}.dtype", "string", python)
    for name in ("symmetric", "skip"):
        if name in raw:
            values[name] = _expect_bool(raw[name], source, f"{key}.{name}")
    values.update(_override_granularity(raw, source, key))
    if "match" not in values and "layer_type" not in values:
        raise ConfigValueError(
            source, key, "an override needs match (layer-name pattern) or layer_type, or both"
        )
    if not any(name in values for name in _OVERRIDE_SETTINGS):
        raise ConfigValueError(source, key, "the override sets nothing", allowed=_OVERRIDE_SETTINGS)
    return Override(source=source, index=index, **values)


def _override_from_entry(key: object, value: object, python: bool) -> object:
    """One entry of the mapping form (``{"lm_head": {"skip": True}}``) as an override table:
    the key selects (a pattern; in Python also a module class), the value is a table of
    settings, a scheme name (or torch dtype), or None for "keep in float"."""
    table: dict[str, Any]
    if isinstance(value, Mapping):
        table = dict(value)
    elif value is None and python:
        table = {"skip": True}
    elif isinstance(value, str) or (python and isinstance(value, torch.dtype)):
        table = {"dtype": value}
    else:
        return value  # refused below with the table's message
    if python and isinstance(key, type) and issubclass(key, nn.Module):
        table.setdefault("layer_type", f"{key.__module__}.{key.__qualname__}")
    else:
        table.setdefault("match", key)
    return table


def _parse_overrides(value: object, source: str, shown: str, python: bool) -> tuple[Override, ...]:
    """A list of override tables, or the mapping form: selector -> settings. In a file the
    mapping's values must be tables, so ``[overrides]`` written for ``[[overrides]]`` is refused
    rather than read as a rule."""
    entries: list[tuple[str, object]]
    if isinstance(value, Mapping) and (
        python or all(isinstance(v, Mapping) for v in value.values())
    ):
        entries = [
            (f"{shown}[{k!r}]", _override_from_entry(k, v, python)) for k, v in value.items()
        ]
    elif isinstance(value, (list, tuple)):
        entries = [(f"{shown}[{i}]", raw) for i, raw in enumerate(value)]
    else:
        raise ConfigTypeError(
            source,
            shown,
            "must be an array of tables ([[overrides]] in TOML, a list of dicts in Python), or a "
            'table of pattern -> table of settings ([overrides."lm_head"] with skip = true); '
            f"got {_type_name(value)} {value!r}",
        )
    return tuple(
        _parse_override(raw, source, key, i, python=python) for i, (key, raw) in enumerate(entries)
    )


def parse_settings(
    table: Mapping[str, Any], source: str, *, python: bool = False, key_prefix: str = ""
) -> dict[str, Any]:
    """Validate one layer of configuration (a file's table, a mapping, or parameters).

    ``python=True`` (parameters) also accepts a single pattern where a list is expected, tuples,
    callables as selectors, torch dtypes as scheme names, and :class:`Override` objects.
    Returns only the settings this layer sets.
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
        out[key] = _parse_setting(key, value, source, shown, python)
    return out


def _parse_setting(key: str, value: object, source: str, shown: str, python: bool) -> Any:
    if key == "dtype":
        return _expect_dtype(value, source, shown, SETTINGS[key], python)
    if key in ("include", "exclude"):
        return _expect_selectors(value, source, shown, python)
    if key == "disable_plugins":
        return _expect_str_list(value, source, shown, allow_str=python)
    if key in ("strict", "fuse_activations"):
        return _expect_bool(value, source, shown)
    if key == "log_level":
        text = _expect_str(value, source, shown, SETTINGS[key]).upper()
        if text not in LOG_LEVELS:
            raise ConfigValueError(
                source, shown, f"unknown log level {value!r}", allowed=LOG_LEVELS, got=text
            )
        return text
    if key in _ACCURACY_KEYS:
        return _parse_accuracy(key, value, source, shown, python)
    assert key == "overrides", key
    return _parse_overrides(value, source, shown, python)


def _parse_accuracy(key: str, value: object, source: str, shown: str, python: bool) -> object:
    """The accuracy settings: numbers in range, a known metric (or a callable from Python)."""
    if key == "smooth":
        return _expect_bool(value, source, shown)
    if key == "fallback":
        return _expect_dtype(value, source, shown, SETTINGS[key], python)
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


def read_pyproject(path: Path) -> dict[str, Any] | None:
    source = f"pyproject {path}"
    data = _read_toml(path, source)
    table = data.get("tool", {}).get("quantcore") if isinstance(data.get("tool"), dict) else None
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigTypeError(source, PYPROJECT_TABLE, "must be a table ([tool.quantcore])")
    return parse_settings(table, source, key_prefix=f"{PYPROJECT_TABLE}.")
