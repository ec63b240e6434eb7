"""Which layers a call quantizes, and how: include/exclude selectors and per-layer overrides.

A selector is a layer-name pattern (glob, or ``re:<regex>``) or a callable ``(name, module) ->
bool``. Either matches a layer when it matches the layer itself or one of its parents
(``encoder`` covers ``encoder.fc``); a callable is asked about each of them, with the module of
that name (None for state-dict input, which has no modules). torchao's ``filter_fn`` takes
``(module, name)``: quantcore's callables take the name first, as the patterns do.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeAlias

from torch import nn

from quantcore.specs import Granularity, LayerSpec

REGEX_PREFIX = "re:"
PARAMETER_SOURCE = "parameter"

LayerFilter: TypeAlias = Callable[[str, nn.Module | None], bool]
Selector: TypeAlias = str | LayerFilter
# the module a layer name stands for (None where there is none: state-dict input)
ModuleLookup: TypeAlias = Callable[[str], nn.Module | None]


def _no_module(_: str) -> None:
    return None


def _prefixes(name: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``; the root ``""`` is its own only prefix."""
    parts = name.split(".") if name else [""]
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def pattern_matches(pattern: str, name: str) -> bool:
    """Whether ``pattern`` matches layer ``name`` or one of its parents (``encoder`` covers
    ``encoder.fc``). Glob by default; ``re:<regex>`` is a full-match regular expression."""
    if pattern.startswith(REGEX_PREFIX):
        regex = re.compile(pattern[len(REGEX_PREFIX) :])
        return any(regex.fullmatch(prefix) for prefix in _prefixes(name))
    return any(fnmatch.fnmatchcase(prefix, pattern) for prefix in _prefixes(name))


def selector_matches(selector: Selector, name: str, lookup: ModuleLookup | None = None) -> bool:
    """Whether ``selector`` matches layer ``name`` or one of its parents."""
    if isinstance(selector, str):
        return pattern_matches(selector, name)
    look = lookup or _no_module
    return any(bool(selector(prefix, look(prefix))) for prefix in _prefixes(name))


def first_match(
    selectors: Sequence[Selector], name: str, lookup: ModuleLookup | None = None
) -> Selector | None:
    """The first of ``selectors`` that matches layer ``name`` (or a parent), else None."""
    for selector in selectors:
        if selector_matches(selector, name, lookup):
            return selector
    return None


def describe_selector(selector: Selector) -> str:
    """A pattern as written; a callable as ``<filter module.name>``."""
    if isinstance(selector, str):
        return selector
    name = getattr(selector, "__qualname__", None) or type(selector).__qualname__
    return f"<filter {getattr(selector, '__module__', '?')}.{name}>"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class Override:
    """A per-layer rule: layers matching ``match`` (a selector) and ``layer_type`` get these
    settings.

    Every matching override applies, in order; a later one wins for a field both set.
    ``granularity``, ``group_size``, ``symmetric`` and ``observer`` concern the layer's weights.
    """

    match: Selector | None = None
    layer_type: str | None = None
    dtype: str | None = None
    granularity: Granularity | None = None
    group_size: int | None = None
    symmetric: bool | None = None
    observer: str | None = None
    skip: bool | None = None
    source: str = PARAMETER_SOURCE
    index: int = 0

    def matches(
        self, name: str, type_names: Iterable[str], lookup: ModuleLookup | None = None
    ) -> bool:
        if self.match is not None and not selector_matches(self.match, name, lookup):
            return False
        if self.layer_type is not None:
            return any(fnmatch.fnmatchcase(t, self.layer_type) for t in type_names)
        return True

    def settings(self) -> dict[str, object]:
        values = {
            "dtype": self.dtype,
            "granularity": self.granularity.value if self.granularity else None,
            "group_size": self.group_size,
            "symmetric": self.symmetric,
            "observer": self.observer,
            "skip": self.skip,
        }
        return {k: v for k, v in values.items() if v is not None}

    def describe(self) -> str:
        """``overrides[0] (match 'head', layer_type 'Linear'): dtype=fp16``, as reports show it."""
        selectors = []
        if self.match is not None:
            selectors.append(f"match {describe_selector(self.match)!r}")
        if self.layer_type is not None:
            selectors.append(f"layer_type {self.layer_type!r}")
        settings = ", ".join(f"{k}={_toml_value(v)}" for k, v in self.settings().items())
        return f"overrides[{self.index}] ({', '.join(selectors)}): {settings}"

    def to_dict(self) -> dict[str, object]:
        """The rule as a table; a callable ``match`` is kept as the callable."""
        out: dict[str, object] = {}
        if self.match is not None:
            out["match"] = self.match
        if self.layer_type is not None:
            out["layer_type"] = self.layer_type
        out.update(self.settings())
        return out


# -- per-layer resolution --------------------------------------------------------------------


@dataclass(frozen=True)
class LayerDecision:
    """What the overrides decide for one layer."""

    overrides: tuple[Override, ...]
    skip: bool
    dtype: str | None

    def describe(self) -> str | None:
        return "; ".join(o.describe() for o in self.overrides) or None


def decide_layer(
    overrides: Sequence[Override],
    name: str,
    type_names: Iterable[str],
    lookup: ModuleLookup | None = None,
) -> LayerDecision:
    """Combine the overrides matching a layer: later ones win for fields both set."""
    names = tuple(type_names)
    applied = tuple(o for o in overrides if o.matches(name, names, lookup))
    skip = False
    dtype = None
    for o in applied:
        if o.skip is not None:
            skip = o.skip
        if o.dtype is not None:
            dtype = o.dtype
    return LayerDecision(applied, skip, dtype)


def _weight_changes(override: Override) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if override.granularity is not None:
        changes["granularity"] = override.granularity
        # a granularity without groups drops the scheme's group size; per_group keeps it
        if override.granularity is not Granularity.PER_GROUP:
            changes["group_size"] = None
    if override.group_size is not None:
        changes["granularity"] = Granularity.PER_GROUP
        changes["group_size"] = override.group_size
    if override.symmetric is not None:
        changes["symmetric"] = override.symmetric
    if override.observer is not None:
        changes["observer"] = override.observer
    return changes


def apply_overrides(spec: LayerSpec, overrides: Sequence[Override]) -> tuple[LayerSpec, list[str]]:
    """The scheme's LayerSpec with the overrides' weight settings applied, plus notes on those
    that cannot apply (an unscaled format such as fp16 has no granularity or observer)."""
    weight = spec.weight
    notes: list[str] = []
    for o in overrides:
        changes = _weight_changes(o)
        if not changes:
            continue
        if weight.granularity is Granularity.NONE:
            shown = sorted(k for k in o.settings() if k in changes)
            notes.append(
                f"overrides[{o.index}] {', '.join(shown)} ignored: the scheme stores "
                "weights without scales"
            )
            continue
        try:
            weight = replace(weight, **changes)
        except ValueError as exc:  # per_group without a group size, say
            notes.append(f"overrides[{o.index}] ignored: {exc}")
    return (replace(spec, weight=weight) if weight is not spec.weight else spec), notes


@dataclass(frozen=True)
class Selection:
    """Which layers the caller wants quantized, and how (from the effective configuration)."""

    include: tuple[Selector, ...] = ()  # empty: every layer
    exclude: tuple[Selector, ...] = ()
    overrides: tuple[Override, ...] = ()

    def not_selected(self, name: str, lookup: ModuleLookup | None = None) -> str | None:
        """Why layer ``name`` is left out by include/exclude selectors, else None."""
        if self.include and first_match(self.include, name, lookup) is None:
            shown = [describe_selector(s) for s in self.include]
            return f"not included by include patterns {shown}"
        if not name:
            return None  # exclusion never takes the root: it would exclude everything
        selector = first_match(self.exclude, name, lookup)
        if selector is None:
            return None
        return f"excluded by pattern {describe_selector(selector)!r}"
