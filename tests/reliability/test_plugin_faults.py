"""Misbehaving plugins, beyond tests/test_plugins.py (which covers a failed import, a hook that
raises, a malformed registration and a duplicate name): each failure is reported with the
plugin's name and distribution, and strict mode turns every one into an error."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

import quantcore
from reliability.helpers import Tally


def _observer() -> quantcore.plugin.Observer:
    return quantcore.plugin.Observer(name="x", compute=lambda t, **kw: None)  # type: ignore[arg-type,return-value]


def plugin(hook: str, body: Callable[[], object]) -> object:
    def impl() -> object:
        return body()

    impl.__name__ = hook
    return type("Plugin", (), {hook: staticmethod(quantcore.plugin.hookimpl(impl))})


def _invalid_scheme() -> object:
    return [quantcore.plugin.Scheme("", "f", {}, lambda *a: None, lambda w: w)]  # type: ignore[arg-type,return-value]


def _raising_generator() -> object:
    def gen() -> object:
        yield _observer()
        raise KeyError("half-way")

    return gen()


CASES: dict[str, tuple[str, Callable[[], object], str]] = {
    "returns a non-iterable": ("quantcore_observers", lambda: 42, "TypeError"),
    "record constructor raises": ("quantcore_schemes", _invalid_scheme, "non-empty"),
    "generator raises half-way": ("quantcore_observers", _raising_generator, "half-way"),
    "raises an odd exception": ("quantcore_layer_mappers", lambda: [][0], "IndexError"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_misbehaving_hook_is_reported_with_plugin_and_distribution(case: str, tally: Tally) -> None:
    tally.add("plugin fault cases")
    hook, body, detail = CASES[case]
    manager = quantcore.create_plugin_manager()
    manager.register_plugin(plugin(hook, body), "misfit", distribution="misfit-dist")
    with pytest.warns(quantcore.PluginLoadWarning) as caught:
        registry = manager.registry()
    message = str(caught[0].message)
    assert "'misfit'" in message and "'misfit-dist'" in message and detail in message
    assert set(registry.schemes) == {"int8", "fp16"}  # the rest still works
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", quantcore.PluginLoadWarning)
        result = quantcore.quantize(nn.Linear(2, 2), plugin_manager=manager)
    assert len(result.report.quantized) == 1

    strict = quantcore.create_plugin_manager(strict=True)
    strict.register_plugin(plugin(hook, body), "misfit", distribution="misfit-dist")
    with pytest.raises(quantcore.PluginLoadError) as info:
        strict.registry()
    assert info.value.plugin == "misfit" and info.value.distribution == "misfit-dist"


def test_hook_that_raises_is_an_error_in_strict_mode(tally: Tally) -> None:
    tally.add("plugin fault cases")
    manager = quantcore.create_plugin_manager(strict=True)
    manager.register_plugin(
        plugin("quantcore_observers", lambda: 1 / 0), "exploder", distribution="exploder-dist"
    )
    with pytest.raises(
        quantcore.PluginLoadError, match=r"'exploder'.*'exploder-dist'.*ZeroDivision"
    ):
        manager.registry()


def test_bad_hook_signature_is_reported(tally: Tally) -> None:
    tally.add("plugin fault cases")

    class WrongSignature:
        @quantcore.plugin.hookimpl
        def quantcore_schemes(self, unexpected: int) -> list[object]:
            return []

    manager = quantcore.create_plugin_manager()
    with pytest.warns(quantcore.PluginLoadWarning, match="'wrong'.*'wrong-dist'"):
        manager.register_plugin(WrongSignature(), "wrong", distribution="wrong-dist")
    assert {i.name: i.status for i in manager.plugin_infos()}["wrong"] == "failed"
    strict = quantcore.create_plugin_manager(strict=True)
    with pytest.raises(quantcore.PluginLoadError, match="wrong-dist"):
        strict.register_plugin(WrongSignature(), "wrong", distribution="wrong-dist")


@pytest.mark.parametrize("strict", [False, True])
def test_name_taken_names_both_plugins_in_either_mode(strict: bool, tally: Tally) -> None:
    tally.add("plugin fault cases")
    manager = quantcore.create_plugin_manager(strict=strict)
    int8 = manager.registry().scheme("int8")
    manager.register_plugin(
        plugin("quantcore_schemes", lambda: [int8]), "impostor", distribution="impostor-dist"
    )
    with pytest.raises(quantcore.PluginConflictError) as info:
        quantcore.quantize(nn.Linear(2, 2), plugin_manager=manager)
    assert "scheme 'int8'" in str(info.value)
    assert "impostor-dist" in str(info.value) and "distribution 'quantcore'" in str(info.value)
    assert torch.get_default_dtype() == torch.float32
