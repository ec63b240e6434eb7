"""Collection: call every hook implementation, validate what it yields, and build the
:class:`~quantcore.registrations.Registry`.

Each implementation is called on its own, so a failure is attributed to the plugin that caused
it. What collection finds wrong is handed to the manager (:class:`Problems`), which decides
whether it is an error (first-party plugins, strict mode) or a warning and a skipped item.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import pluggy

from quantcore import hookspecs
from quantcore.errors import PluginConflictError
from quantcore.registrations import KernelBackend, Registry, Scheme


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
                        f"expected quantcore.plugin.{expected.__name__}",
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


def _check_scheme_names(schemes: Mapping[str, Scheme], provider: Callable[[str], str]) -> None:
    """A scheme's name, aliases and torch dtypes select it, so they share one namespace across
    schemes (case-insensitive): a third party's alias may not shadow a built-in's. One default."""
    owner: dict[str, Scheme] = {}
    default: Scheme | None = None
    for scheme in schemes.values():
        for word in scheme.names():
            other = owner.setdefault(word, scheme)
            if other is not scheme:
                raise PluginConflictError(
                    "scheme name, alias or torch dtype",
                    word,
                    f"{provider(other.name)} (scheme {other.name!r})",
                    f"{provider(scheme.name)} (scheme {scheme.name!r})",
                )
        if scheme.default and default is not None:
            raise PluginConflictError(
                "default scheme",
                scheme.name,
                f"{provider(default.name)} (scheme {default.name!r})",
                f"{provider(scheme.name)} (scheme {scheme.name!r})",
                claim="two schemes are marked default=True",
            )
        default = scheme if scheme.default else default


def _with_references(
    backends: dict[str, KernelBackend], collected: _Collected, problems: Problems
) -> dict[str, KernelBackend]:
    """Exactly one reference backend per (op, format): the oracle every other one is tested
    against, and what runs when nothing faster does. Backends of a pair without one are
    refused (skipped with a warning for a third party), unless they all say the op's layers
    compute it themselves (``layer_reference``)."""
    plugin = {name: collected.providers[("kernel backend", name)] for name in backends}
    groups: dict[tuple[str, str], list[KernelBackend]] = {}
    for backend in backends.values():
        groups.setdefault((backend.op, backend.weight_format), []).append(backend)
    kept = dict(backends)
    for (op, fmt), members in groups.items():
        references = [b for b in members if b.reference]
        if not references and all(b.layer_reference for b in members):
            continue  # the layers compute this op themselves: that code is the reference
        if len(references) > 1:
            first, second = references[:2]
            raise PluginConflictError(
                "reference kernel backend",
                f"{op} on {fmt}",
                f"{problems.describe(plugin[first.name])} ({first.name!r})",
                f"{problems.describe(plugin[second.name])} ({second.name!r})",
                claim=f"op {op!r} on {fmt!r} weights has two reference=True backends",
            )
        if references:
            continue
        for backend in members:
            problems.bad_registration(
                plugin[backend.name],
                f"kernel backend {backend.name!r} serves op {op!r} on {fmt!r} weights, which no "
                "reference=True backend serves; register exactly one reference backend per "
                "(op, format) (the always-available oracle the others are tested against)",
            )
            del kept[backend.name]
            del collected.providers[("kernel backend", backend.name)]
    hook = "quantcore_kernel_backends"
    collected.items[hook] = [(p, b) for p, b in collected.items[hook] if b.name in kept]
    return kept


def _registry(collected: _Collected, problems: Problems) -> Registry:
    schemes = _unique(collected, "quantcore_schemes", problems)
    _check_scheme_names(
        schemes, lambda name: problems.describe(collected.providers[("scheme", name)])
    )
    observers = _unique(collected, "quantcore_observers", problems)
    mappers = _unique(collected, "quantcore_layer_mappers", problems)
    adapters = _unique(collected, "quantcore_input_adapters", problems)
    backends = _with_references(
        _unique(collected, "quantcore_kernel_backends", problems), collected, problems
    )
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
