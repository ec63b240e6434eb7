"""Collection: call every hook implementation, validate what it yields, and build the
:class:`~quantcore.registrations.Registry`.

Each implementation is called on its own, so a failure is attributed to the plugin that caused
it. What collection finds wrong is handed to the manager (:class:`Problems`), which decides
whether it is an error (first-party plugins, strict mode) or a warning and a skipped item.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import pluggy

from quantcore import hookspecs
from quantcore.errors import PluginConflictError
from quantcore.registrations import Registry


class Problems(Protocol):
    """How the plugin manager wants collection problems reported."""

    def hook_failed(self, plugin_name: str, hook_name: str, exc: Exception) -> None: ...

    def bad_registration(self, plugin_name: str, message: str) -> None: ...

    def describe(self, plugin_name: str) -> str: ...


@dataclass
class _Collected:
    """Records by hook, in registration order, each with the plugin that yielded it."""

    items: dict[str, list[tuple[str, Any]]] = field(
        default_factory=lambda: {hook: [] for hook in hookspecs.HOOKS}
    )
    providers: dict[tuple[str, str], str] = field(default_factory=dict)

    def of(self, hook_name: str) -> Iterator[tuple[str, Any]]:
        return iter(self.items[hook_name])

    def provided(self) -> dict[str, dict[str, tuple[str, ...]]]:
        out: dict[str, dict[str, list[str]]] = {}
        for hook_name, entries in self.items.items():
            kind = hookspecs.HOOKS[hook_name][0]
            for plugin_name, item in entries:
                out.setdefault(plugin_name, {}).setdefault(kind, []).append(item.name)
        return {p: {k: tuple(v) for k, v in kinds.items()} for p, kinds in out.items()}


def collect(hook: pluggy.HookRelay, problems: Problems) -> Registry:
    """Call every hook implementation and validate what it returns."""
    collected = _Collected()
    for hook_name, (_, expected) in hookspecs.HOOKS.items():
        for impl in getattr(hook, hook_name).get_hookimpls():
            items = _call(impl, hook_name, problems)
            for item in items or ():
                if isinstance(item, expected):
                    collected.items[hook_name].append((impl.plugin_name, item))
                else:
                    problems.bad_registration(
                        impl.plugin_name,
                        f"hook {hook_name} yielded {type(item).__name__}, "
                        f"expected quantcore.{expected.__name__}",
                    )
    return _registry(collected, problems)


def _call(impl: Any, hook_name: str, problems: Problems) -> Sequence[Any] | None:
    try:
        result = impl.function()
        return list(result) if result is not None else []
    except Exception as exc:
        problems.hook_failed(impl.plugin_name, hook_name, exc)
        return None


def _unique(collected: _Collected, hook_name: str, problems: Problems) -> dict[str, Any]:
    """Records by name; one name registered twice is a conflict naming both plugins."""
    kind = hookspecs.HOOKS[hook_name][0]
    result: dict[str, Any] = {}
    for plugin_name, item in collected.of(hook_name):
        key = (kind, item.name)
        if key in collected.providers:
            raise PluginConflictError(
                kind,
                item.name,
                problems.describe(collected.providers[key]),
                problems.describe(plugin_name),
            )
        collected.providers[key] = plugin_name
        result[item.name] = item
    return result


def _registry(collected: _Collected, problems: Problems) -> Registry:
    schemes = _unique(collected, "quantcore_schemes", problems)
    observers = _unique(collected, "quantcore_observers", problems)
    mappers = _unique(collected, "quantcore_layer_mappers", problems)
    adapters = _unique(collected, "quantcore_input_adapters", problems)
    backends = _unique(collected, "quantcore_kernel_backends", problems)
    return Registry(
        schemes=MappingProxyType(schemes),
        observers=MappingProxyType(observers),
        layer_mappers=tuple(sorted(mappers.values(), key=lambda m: (-m.priority, m.name))),
        input_adapters=tuple(sorted(adapters.values(), key=lambda a: (-a.priority, a.name))),
        kernel_backends=tuple(backends.values()),
        providers=MappingProxyType(
            {key: problems.describe(name) for key, name in collected.providers.items()}
        ),
        provided=MappingProxyType(collected.provided()),
    )
