"""Plugin discovery, loading and collection.

Discovery (reading entry-point metadata) is separate from loading (importing the plugin module and
registering it), and both are separate from collection (calling the hooks and validating what they
return). No state lives at module level: every manager is built fresh by
:func:`create_plugin_manager`, and every API call can be handed one.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, cast

import importlib_metadata
import pluggy

from quantcore import hookspecs
from quantcore.errors import (
    InvalidRegistrationError,
    PluginConflictError,
    PluginLoadError,
    PluginLoadWarning,
    UnknownObserverError,
    UnknownSchemeError,
)
from quantcore.registrations import InputAdapter, KernelBackend, LayerMapper, Observer, Scheme

logger = logging.getLogger("quantcore")

ENTRY_POINT_GROUP = "quantcore.plugins"
FIRST_PARTY_DISTRIBUTION = "quantcore"
DISABLE_ENV_VAR = "QUANTCORE_DISABLE_PLUGINS"
LOCAL_DISTRIBUTION = "<registered in-process>"

PluginStatus = Literal["loaded", "disabled", "failed"]


@dataclass(frozen=True)
class PluginCandidate:
    """A plugin found in installed metadata, not yet imported."""

    name: str
    value: str
    distribution: str
    version: str

    @property
    def first_party(self) -> bool:
        return self.distribution == FIRST_PARTY_DISTRIBUTION

    def load(self) -> object:
        return importlib_metadata.EntryPoint(self.name, self.value, ENTRY_POINT_GROUP).load()


@dataclass(frozen=True)
class PluginInfo:
    """One plugin as ``quantcore plugins`` and :func:`quantcore.list_plugins` show it."""

    name: str
    distribution: str
    version: str
    first_party: bool
    status: PluginStatus
    error: str | None = None
    provides: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "first_party": self.first_party,
            "status": self.status,
            "error": self.error,
            "provides": {k: list(v) for k, v in self.provides.items()},
        }


def discover_plugins() -> tuple[PluginCandidate, ...]:
    """Read the ``quantcore.plugins`` entry points of every installed distribution. Imports nothing."""
    found: dict[str, PluginCandidate] = {}
    for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        candidate = PluginCandidate(
            name=ep.name,
            value=ep.value,
            distribution=dist.metadata["Name"] if dist is not None else "<unknown>",
            version=dist.version if dist is not None else "",
        )
        # The same distribution can be visible twice on sys.path (editable + site); keep the first.
        found.setdefault(candidate.name, candidate)
    return tuple(found.values())


def disabled_from_environment() -> frozenset[str]:
    raw = os.environ.get(DISABLE_ENV_VAR, "")
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class _Origin:
    distribution: str
    version: str
    first_party: bool


@dataclass(frozen=True)
class Registry:
    """Everything the loaded plugins provide, validated, with who provided it."""

    schemes: Mapping[str, Scheme]
    observers: Mapping[str, Observer]
    layer_mappers: tuple[LayerMapper, ...]
    input_adapters: tuple[InputAdapter, ...]
    kernel_backends: tuple[KernelBackend, ...]
    providers: Mapping[tuple[str, str], str]

    def provider(self, kind: str, name: str) -> str:
        return self.providers.get((kind, name), "<unknown>")

    def scheme(self, name: str) -> Scheme:
        key = name.strip().lower()
        for scheme in self.schemes.values():
            if key == scheme.name.lower() or key in (a.lower() for a in scheme.aliases):
                return scheme
        raise UnknownSchemeError(
            name, {n: self.provider("scheme", n) for n in self.schemes}
        )

    def observer(self, name: str) -> Observer:
        try:
            return self.observers[name]
        except KeyError:
            raise UnknownObserverError(name, self.observers) from None

    def kernel_candidates(self, op: str, weight_format: str) -> tuple[KernelBackend, ...]:
        """Backends for (op, format), preferred first; the reference backend always last."""
        matching = [b for b in self.kernel_backends if b.op == op and b.weight_format == weight_format]
        return tuple(sorted(matching, key=lambda b: (b.reference, -b.priority, b.name)))


class QuantcorePluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers where each plugin came from and what went wrong."""

    def __init__(self, *, strict: bool = False) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.strict = strict
        self._origins: dict[str, _Origin] = {}
        self._infos: dict[str, PluginInfo] = {}

    # -- loading -------------------------------------------------------------------------------
    def load_candidates(
        self, candidates: Iterable[PluginCandidate], *, disable: Iterable[str] = ()
    ) -> None:
        """Import and register discovered plugins, skipping disabled ones.

        A first-party plugin that fails is an error; a third-party one is reported in a warning and
        skipped, unless the manager is strict.
        """
        disabled = set(disable)
        for candidate in candidates:
            if candidate.name in disabled or candidate.distribution in disabled:
                self.set_blocked(candidate.name)
                self._infos[candidate.name] = PluginInfo(
                    candidate.name, candidate.distribution, candidate.version,
                    candidate.first_party, "disabled",
                )
                logger.debug("plugin %s disabled", candidate.name)
                continue
            try:
                plugin = candidate.load()
            except Exception as exc:
                self._report_failure(
                    candidate.name, _Origin(candidate.distribution, candidate.version, candidate.first_party), exc
                )
                continue
            self.register_plugin(
                plugin,
                candidate.name,
                distribution=candidate.distribution,
                version=candidate.version,
                first_party=candidate.first_party,
            )

    def register_plugin(
        self,
        plugin: object,
        name: str,
        *,
        distribution: str = LOCAL_DISTRIBUTION,
        version: str = "",
        first_party: bool = False,
    ) -> None:
        """Register an already imported plugin object (a module or any object with hookimpls)."""
        if self.is_blocked(name):
            return
        origin = _Origin(distribution, version, first_party)
        try:
            self.register(plugin, name=name)
        except Exception as exc:  # pluggy validates hookimpl signatures here
            self._report_failure(name, origin, exc)
            return
        self._origins[name] = origin
        self._infos[name] = PluginInfo(name, distribution, version, first_party, "loaded")

    def _report_failure(self, name: str, origin: _Origin, exc: BaseException | str) -> None:
        self._infos[name] = PluginInfo(
            name, origin.distribution, origin.version, origin.first_party, "failed", str(exc)
        )
        error = PluginLoadError(name, origin.distribution, exc)
        if origin.first_party or self.strict:
            raise error from (exc if isinstance(exc, BaseException) else None)
        warnings.warn(str(error), PluginLoadWarning, stacklevel=4)
        logger.warning("%s", error)
        if self.get_plugin(name) is not None:
            self.unregister(name=name)

    # -- collection ----------------------------------------------------------------------------
    def registry(self) -> Registry:
        """Call every hook implementation and validate what it returns."""
        collected: dict[str, list[tuple[str, Any]]] = {hook: [] for hook in hookspecs.HOOKS}
        provides: dict[str, dict[str, list[str]]] = {}
        for hook_name, (kind, expected) in hookspecs.HOOKS.items():
            caller = getattr(self.hook, hook_name)
            for impl in caller.get_hookimpls():
                plugin_name = impl.plugin_name
                items = self._call_impl(plugin_name, hook_name, impl)
                if items is None:
                    continue
                for item in items:
                    if not isinstance(item, expected):
                        self._bad_registration(
                            plugin_name,
                            f"hook {hook_name} yielded {type(item).__name__}, "
                            f"expected quantcore.{expected.__name__}",
                        )
                        continue
                    collected[hook_name].append((plugin_name, item))
                    name: str = cast(Any, item).name
                    provides.setdefault(plugin_name, {}).setdefault(kind, []).append(name)
        for name, kinds in provides.items():
            info = self._infos.get(name)
            if info is not None and info.status == "loaded":
                self._infos[name] = PluginInfo(
                    info.name, info.distribution, info.version, info.first_party, info.status,
                    provides={k: tuple(v) for k, v in kinds.items()},
                )
        providers: dict[tuple[str, str], str] = {}

        def unique(hook_name: str) -> dict[str, Any]:
            kind = hookspecs.HOOKS[hook_name][0]
            result: dict[str, Any] = {}
            for plugin_name, item in collected[hook_name]:
                key = (kind, item.name)
                if key in providers:
                    raise PluginConflictError(
                        kind, item.name, self._describe(providers[key]), self._describe(plugin_name)
                    )
                providers[key] = plugin_name
                result[item.name] = item
            return result

        schemes = unique("quantcore_schemes")
        observers = unique("quantcore_observers")
        mappers = unique("quantcore_layer_mappers")
        adapters = unique("quantcore_input_adapters")
        backends = unique("quantcore_kernel_backends")
        return Registry(
            schemes=MappingProxyType(schemes),
            observers=MappingProxyType(observers),
            layer_mappers=tuple(sorted(mappers.values(), key=lambda m: (-m.priority, m.name))),
            input_adapters=tuple(sorted(adapters.values(), key=lambda a: (-a.priority, a.name))),
            kernel_backends=tuple(backends.values()),
            providers=MappingProxyType(
                {key: self._describe(name) for key, name in providers.items()}
            ),
        )

    def _call_impl(self, plugin_name: str, hook_name: str, impl: Any) -> Sequence[Any] | None:
        try:
            result = impl.function()
            return list(result) if result is not None else []
        except Exception as exc:
            origin = self._origins.get(plugin_name, _Origin(LOCAL_DISTRIBUTION, "", False))
            self._report_failure(plugin_name, origin, f"hook {hook_name} raised {type(exc).__name__}: {exc}")
            return None

    def _bad_registration(self, plugin_name: str, message: str) -> None:
        origin = self._origins.get(plugin_name, _Origin(LOCAL_DISTRIBUTION, "", False))
        text = f"plugin {plugin_name!r} from distribution {origin.distribution!r}: {message}"
        if origin.first_party or self.strict:
            raise InvalidRegistrationError(text)
        warnings.warn(text + "; the item was skipped", PluginLoadWarning, stacklevel=4)
        logger.warning("%s; the item was skipped", text)

    def _describe(self, plugin_name: str) -> str:
        origin = self._origins.get(plugin_name)
        dist = origin.distribution if origin else LOCAL_DISTRIBUTION
        return f"plugin {plugin_name!r} (distribution {dist!r})"

    # -- listing -------------------------------------------------------------------------------
    def plugin_infos(self) -> list[PluginInfo]:
        """Every plugin seen: loaded, disabled and failed, with what the loaded ones provide."""
        try:
            self.registry()  # fills in what each plugin provides
        except Exception as exc:  # listing must still work when collection fails
            logger.warning("collecting plugin registrations failed: %s", exc)
        return sorted(self._infos.values(), key=lambda i: (not i.first_party, i.name))


def create_plugin_manager(
    *,
    load_entry_points: bool = True,
    disable: Iterable[str] | None = None,
    strict: bool = False,
    candidates: Iterable[PluginCandidate] | None = None,
) -> QuantcorePluginManager:
    """Build a fresh plugin manager.

    ``disable`` names plugins (entry-point names) or whole distributions to skip, on top of those
    listed in the ``QUANTCORE_DISABLE_PLUGINS`` environment variable (comma-separated).
    ``candidates`` replaces discovery (useful in tests); ``load_entry_points=False`` loads nothing.
    """
    manager = QuantcorePluginManager(strict=strict)
    if load_entry_points or candidates is not None:
        found = discover_plugins() if candidates is None else tuple(candidates)
        manager.load_candidates(found, disable=set(disable or ()) | disabled_from_environment())
    return manager
