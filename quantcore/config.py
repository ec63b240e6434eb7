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
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Union

from quantcore.config_parse import (
    PYPROJECT_TABLE,
    SETTINGS,
    find_pyproject,
    parse_settings,
    read_config_file,
    read_pyproject,
    user_config_path,
)
from quantcore.errors import (
    ConfigError,
    ConfigFileError,
    ConfigTypeError,
    ConfigValueError,
    UnknownSchemeError,
    describe_schemes,
)
from quantcore.selectors import (
    PARAMETER_SOURCE,
    Override,
    Selector,
    apply_overrides,
    decide_layer,
    describe_selector,
    first_match,
    pattern_matches,
)

if TYPE_CHECKING:
    from quantcore.registrations import Registry

CONFIG_ENV_VAR = "QUANTCORE_CONFIG"
DEFAULT_SOURCE = "default"
ENVIRONMENT_SOURCE = "environment"


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
    include: tuple[Selector, ...] = ()  # empty: every layer
    exclude: tuple[Selector, ...] = ()
    overrides: tuple[Override, ...] = ()
    disable_plugins: tuple[str, ...] = ()
    strict: bool = False
    log_level: str | None = None  # None: leave the "quantcore" logger as the caller set it
    max_error: float | None = None
    error_metric: str | Callable[[Any, Any], float] = "relative_l2"
    fallback: str | None = None
    smooth: bool = False
    smooth_alpha: float = 0.5
    fuse_activations: bool = True
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
                value = [_json_override(o) for o in self.overrides]
            elif key in ("include", "exclude"):
                value = [describe_selector(s) for s in value]
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


def _json_override(override: Override) -> dict[str, object]:
    out = override.to_dict() | {"source": override.source}
    if override.match is not None:
        out["match"] = describe_selector(override.match)
    return out


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
    if key in ("include", "exclude"):
        return ", ".join(describe_selector(s) for s in value) or "none"
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


# -- resolving -------------------------------------------------------------------------------


Layers = list[tuple[str, dict[str, Any]]]  # (source, settings), lowest priority first


def _explicit_file(config: ConfigInput, env: Mapping[str, str]) -> tuple[str, Path] | None:
    """The file named by ``config=`` (a path), else by ``$QUANTCORE_CONFIG``, as (role, path)."""
    if isinstance(config, Mapping):
        return None
    if config is not None:
        if not isinstance(config, (str, os.PathLike)):
            raise ConfigTypeError(
                PARAMETER_SOURCE,
                "config",
                f"must be a path, a mapping or a QuantizeConfig, got {type(config).__name__}",
            )
        return ("config=", Path(config).expanduser().absolute())
    if env.get(CONFIG_ENV_VAR, "").strip():
        return (CONFIG_ENV_VAR, Path(env[CONFIG_ENV_VAR].strip()).expanduser().absolute())
    return None


def _pyproject_layer(cwd: str | os.PathLike[str] | None, layers: Layers) -> ConfigFile | None:
    pyproject = find_pyproject(Path(cwd) if cwd is not None else None)
    if pyproject is None:
        return None
    table = read_pyproject(pyproject)
    if table is not None:
        layers.append((f"pyproject {pyproject}", table))
    detail = "" if table is not None else "no [tool.quantcore] table"
    return ConfigFile("pyproject", str(pyproject), table is not None, detail)


def _file_layers(
    config: ConfigInput, env: Mapping[str, str], cwd: str | os.PathLike[str] | None
) -> tuple[Layers, list[ConfigFile]]:
    """The configuration files' (and a ``config=`` mapping's) settings, lowest priority first,
    and every place looked at."""
    layers: Layers = []
    files: list[ConfigFile] = []
    explicit = _explicit_file(config, env)
    if explicit is None and not isinstance(config, Mapping):
        user = user_config_path(env)
        if user.is_file():
            layers.append((f"file {user}", read_config_file(user)))
        files.append(ConfigFile("user config", str(user), user.is_file()))
    pyproject = _pyproject_layer(cwd, layers)
    if pyproject is not None:
        files.append(pyproject)
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
    if isinstance(config, Mapping):
        layers.append(
            ("parameter config=", parse_settings(config, "parameter config=", python=True))
        )
    return layers, files


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
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    layers: Layers = []
    if isinstance(config, QuantizeConfig):
        values = {key: getattr(config, key) for key in SETTINGS}
        sources = {key: config.source(key) for key in SETTINGS}
        files = list(config.files)
    else:
        layers, files = _file_layers(config, env, cwd)
    if parameters:
        given = {k: v for k, v in parameters.items() if v is not None}
        layers.append((PARAMETER_SOURCE, parse_settings(given, PARAMETER_SOURCE, python=True)))
    for source, layer in layers:
        for key, value in layer.items():
            values[key] = value
            sources[key] = source
    if not isinstance(config, QuantizeConfig):
        _add_environment_disabled(env, values, sources)
    return QuantizeConfig(
        **values,
        sources=MappingProxyType({key: sources.get(key, DEFAULT_SOURCE) for key in SETTINGS}),
        files=tuple(files),
    )


def _add_environment_disabled(
    env: Mapping[str, str], values: dict[str, Any], sources: dict[str, str]
) -> None:
    """``$QUANTCORE_DISABLE_PLUGINS`` adds to ``disable_plugins``; it never removes a name."""
    env_disabled = _disabled_from(env)
    if env_disabled:
        chosen = tuple(values.get("disable_plugins", ()))
        values["disable_plugins"] = chosen + tuple(p for p in env_disabled if p not in chosen)
        previous = sources.get("disable_plugins")
        sources["disable_plugins"] = (
            f"{previous} + {ENVIRONMENT_SOURCE}" if previous else ENVIRONMENT_SOURCE
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
    "PYPROJECT_TABLE",
    "SETTINGS",
    "ConfigError",
    "ConfigFile",
    "ConfigInput",
    "Override",
    "QuantizeConfig",
    "add_config_argument",
    "apply_overrides",
    "decide_layer",
    "effective_config",
    "find_pyproject",
    "first_match",
    "load_config",
    "parse_settings",
    "pattern_matches",
    "read_config_file",
    "resolve_config",
    "user_config_path",
    "validate_names",
]
