"""Plugin discovery, loading and collection.

Discovery (reading entry-point metadata) is separate from loading (importing the plugin module and
registering it), and both are separate from collection (calling the hooks and validating what they
return). No state lives at module level: every manager is built fresh by
:func:`create_plugin_manager`, and every API call can be handed one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import importlib_metadata
import pluggy

from quantcore import hookspecs
from quantcore.collection import collect
from quantcore.errors import (
    InvalidRegistrationError,
    PluginLoadError,
    PluginLoadWarning,
    did_you_mean,
)
from quantcore.registrations import Registry

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
                    candidate.name,
                    candidate.distribution,
                    candidate.version,
                    candidate.first_party,
                    "disabled",
                )
                logger.debug("plugin %s disabled", candidate.name)
                continue
            try:
                plugin = candidate.load()
            except Exception as exc:
                self._report_failure(
                    candidate.name,
                    _Origin(candidate.distribution, candidate.version, candidate.first_party),
                    exc,
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
            self.register(plugin, name=name)  # pluggy validates hookimpl signatures here
            self.check_pending()
        except pluggy.PluginValidationError as exc:
            self._report_failure(name, origin, self._unknown_hooks(plugin) or exc)
            return
        except Exception as exc:
            self._report_failure(name, origin, exc)
            return
        self._origins[name] = origin
        self._infos[name] = PluginInfo(name, distribution, version, first_party, "loaded")

    def _unknown_hooks(self, plugin: object) -> str:
        """What check_pending() found, said for the plugin's author: a hook implementation whose
        name is no quantcore hook (a typo registers silently in pluggy and provides nothing)."""
        names = [
            name
            for name, caller in vars(self.hook).items()
            if not name.startswith("_")
            and isinstance(caller, pluggy.HookCaller)
            and not caller.has_spec()
            and any(i.plugin is plugin for i in caller.get_hookimpls())
        ]
        return "; ".join(
            f"it implements {name!r}, which is not a quantcore hook"
            f"{did_you_mean(name, hookspecs.HOOKS)} (hooks: {', '.join(hookspecs.HOOKS)})"
            for name in names
        )

    def _report_failure(self, name: str, origin: _Origin, exc: BaseException | str) -> None:
        self._infos[name] = PluginInfo(
            name, origin.distribution, origin.version, origin.first_party, "failed", str(exc)
        )
        error = PluginLoadError(name, origin.distribution, exc)
        if self.get_plugin(name) is not None:
            self.unregister(name=name)
        if origin.first_party or self.strict:
            raise error from (exc if isinstance(exc, BaseException) else None)
        warnings.warn(str(error), PluginLoadWarning, stacklevel=4)
        logger.warning("%s", error)

    # -- collection ----------------------------------------------------------------------------
    def registry(self) -> Registry:
        """Call every hook implementation, validate what it returns, and detect conflicts."""
        return collect(self.hook, self)

    def hook_failed(self, plugin_name: str, hook_name: str, exc: Exception) -> None:
        origin = self._origins.get(plugin_name, _Origin(LOCAL_DISTRIBUTION, "", False))
        self._report_failure(
            plugin_name, origin, f"hook {hook_name} raised {type(exc).__name__}: {exc}"
        )

    def bad_registration(self, plugin_name: str, message: str) -> None:
        origin = self._origins.get(plugin_name, _Origin(LOCAL_DISTRIBUTION, "", False))
        text = f"plugin {plugin_name!r} from distribution {origin.distribution!r}: {message}"
        if origin.first_party or self.strict:
            raise InvalidRegistrationError(text)
        warnings.warn(text + "; the item was skipped", PluginLoadWarning, stacklevel=4)
        logger.warning("%s; the item was skipped", text)

    def describe(self, plugin_name: str) -> str:
        origin = self._origins.get(plugin_name)
        dist = origin.distribution if origin else LOCAL_DISTRIBUTION
        return f"plugin {plugin_name!r} (distribution {dist!r})"

    # -- listing -------------------------------------------------------------------------------
    def plugin_infos(self) -> list[PluginInfo]:
        """Every plugin seen: loaded, disabled and failed, with what the loaded ones provide."""
        provided: Mapping[str, Mapping[str, tuple[str, ...]]] = {}
        try:
            provided = self.registry().provided
        except Exception as exc:  # listing must still work when collection fails
            logger.warning("collecting plugin registrations failed: %s", exc)
        infos = [
            dataclasses.replace(info, provides=dict(provided.get(info.name, {})))
            if info.status == "loaded"
            else info
            for info in self._infos.values()
        ]
        return sorted(infos, key=lambda i: (not i.first_party, i.name))


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
