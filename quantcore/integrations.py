"""Integrations with other libraries, activated when that library is imported.

A plugin that teaches another library about quantcore (transformers' quantizer registry, say)
registers an entry point in the group ``quantcore.integrations`` whose *name* is the module that
must be imported first (``"transformers.quantizers.auto"``) and whose value is a function taking
no arguments. ``import quantcore`` runs it at once if that module is already imported, otherwise
right after it is: the order of the two imports does not matter, and the library's import costs
nothing extra when quantcore is not used with it. The kernel names no library here.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from importlib_metadata import EntryPoint, entry_points

from quantcore.errors import PluginLoadWarning

logger = logging.getLogger("quantcore")

INTEGRATION_GROUP = "quantcore.integrations"


def _run(entry: EntryPoint) -> None:
    """Activate one integration; a failure is a warning, never a failed ``import quantcore``."""
    try:
        entry.load()()
    except Exception as exc:
        message = (
            f"quantcore integration {entry.value!r} (after {entry.name!r} is imported) failed: "
            f"{type(exc).__name__}: {exc}"
        )
        warnings.warn(message, PluginLoadWarning, stacklevel=2)
        logger.warning("%s", message)


class _Loader(importlib.abc.Loader):
    """The module's own loader, followed by the integrations waiting for it."""

    def __init__(self, loader: Any, entries: Sequence[EntryPoint]) -> None:
        self._loader = loader
        self._entries = entries

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        for entry in self._entries:
            _run(entry)

    def __getattr__(self, name: str) -> Any:  # resource readers and the like
        return getattr(self._loader, name)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of the awaited modules, once each."""

    def __init__(self, waiting: dict[str, list[EntryPoint]]) -> None:
        self.waiting = waiting

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        entries = self.waiting.pop(fullname, None)
        if entries is None:
            return None
        if not self.waiting and self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Loader(spec.loader, entries)
                return spec
        return None


def activate_integrations() -> None:
    """Run each installed integration now, or install the hook that runs it after its module."""
    try:
        found = entry_points(group=INTEGRATION_GROUP)
    except Exception as exc:  # broken metadata must not break import quantcore
        logger.debug("reading %s entry points failed: %s", INTEGRATION_GROUP, exc)
        return
    waiting: dict[str, list[EntryPoint]] = {}
    for entry in found:
        if entry.name in sys.modules:
            _run(entry)
        else:
            waiting.setdefault(entry.name, []).append(entry)
    if waiting:
        sys.meta_path.insert(0, _AfterImport(waiting))
