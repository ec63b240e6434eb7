"""Plugin discovery, loading, validation, listing and disabling."""

from __future__ import annotations

import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import importlib_metadata
import pytest
import torch
from torch import nn

import quantcore

TOY_PLUGIN = """
from collections.abc import Iterator
import torch
import torch.nn.functional as F
import quantcore
from quantcore.plugin import Granularity, LayerSpec, QuantizedWeight, WeightSpec

def quantize_weight(weight, spec, observer):
    # "toy" format: weights rounded to one decimal, kept in float32
    return QuantizedWeight("toy", torch.round(weight * 10) / 10, spec=spec)

def prepare(request):
    weight, bias = request.weight.data, request.bias
    return lambda x: F.linear(x, weight, bias)

@quantcore.plugin.hookimpl
def quantcore_schemes():
    yield quantcore.plugin.Scheme(
        name="toy", weight_format="toy",
        layer_specs={"linear": LayerSpec(WeightSpec(Granularity.NONE, observer=None))},
        quantize_weight=quantize_weight, dequantize_weight=lambda w: w.data,
        description="rounds weights to one decimal",
    )

@quantcore.plugin.hookimpl
def quantcore_kernel_backends():
    yield quantcore.plugin.KernelBackend(name="toy-linear", op="linear", weight_format="toy",
                                  prepare=prepare, reference=True)
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A sys.path directory for fake distributions; their modules are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("fake_"):
            del sys.modules[name]


def install_fake_dist(site: Path, dist: str, module: str, source: str, entry_name: str) -> None:
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[quantcore.plugins]\n{entry_name} = {module}\n")


def test_builtin_entry_points_are_in_installed_metadata() -> None:
    dist = importlib_metadata.distribution("quantcore")
    registered = {ep.name: ep.value for ep in dist.entry_points if ep.group == "quantcore.plugins"}
    assert registered == {
        "observers": "quantcore_observers",
        "layers": "quantcore_layers",
        "int8": "quantcore_int8",
        "fp16": "quantcore_fp16",
        "adapters": "quantcore_adapters",
        "transformers": "quantcore_transformers",
    }


def test_discovery_imports_nothing(site: Path) -> None:
    install_fake_dist(site, "fake-lazy", "fake_lazy", "raise RuntimeError('imported!')", "lazy")
    candidates = {c.name: c for c in quantcore.plugin.discover_plugins()}
    assert candidates["lazy"].distribution == "fake-lazy" and not candidates["lazy"].first_party
    assert candidates["int8"].first_party
    assert "fake_lazy" not in sys.modules


def test_third_party_plugin_from_entry_points_is_used_by_quantize(site: Path) -> None:
    install_fake_dist(site, "fake-toy-scheme", "fake_toy", TOY_PLUGIN, "toy")
    manager = quantcore.create_plugin_manager()
    infos = {i.name: i for i in quantcore.list_plugins(manager)}
    assert infos["toy"].status == "loaded" and infos["toy"].distribution == "fake-toy-scheme"
    assert infos["toy"].provides["scheme"] == ("toy",)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4))
    result = quantcore.quantize(model, "toy", plugin_manager=manager)
    assert result.report.quantized[0].kernel == "toy-linear"
    assert torch.equal(result.state_dict["0.weight"], torch.round(model[0].weight * 10) / 10)


def test_broken_third_party_plugin_is_reported_and_skipped(site: Path) -> None:
    install_fake_dist(
        site, "fake-broken", "fake_broken", "import does_not_exist_anywhere", "broken"
    )
    with pytest.warns(quantcore.PluginLoadWarning) as caught:
        manager = quantcore.create_plugin_manager()
    message = str(caught[0].message)
    assert (
        "'broken'" in message
        and "'fake-broken'" in message
        and "does_not_exist_anywhere" in message
    )
    info = {i.name: i for i in manager.plugin_infos()}["broken"]
    assert info.status == "failed" and "does_not_exist_anywhere" in (info.error or "")
    result = quantcore.quantize(nn.Linear(4, 4), plugin_manager=manager)  # the rest still works
    assert len(result.report.quantized) == 1


def test_strict_mode_turns_a_broken_plugin_into_an_error(site: Path) -> None:
    install_fake_dist(site, "fake-broken2", "fake_broken2", "raise ValueError('boom')", "broken2")
    with pytest.raises(quantcore.PluginLoadError) as info:
        quantcore.create_plugin_manager(strict=True)
    assert info.value.plugin == "broken2" and info.value.distribution == "fake-broken2"
    assert "boom" in str(info.value)


def test_first_party_failure_is_an_error() -> None:
    candidate = quantcore.plugin.PluginCandidate(
        "int8", "quantcore_missing_module", "quantcore", "0"
    )
    with pytest.raises(quantcore.PluginLoadError, match="quantcore_missing_module"):
        quantcore.create_plugin_manager(candidates=[candidate])


def test_kernel_without_plugins_says_nothing_can_be_quantized() -> None:
    manager = quantcore.create_plugin_manager(load_entry_points=False)
    assert quantcore.list_plugins(manager) == []
    with pytest.raises(quantcore.UnknownSchemeError, match="no quantcore plugin is loaded"):
        quantcore.quantize(nn.Linear(2, 2), plugin_manager=manager)


def test_disable_by_argument_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    manager = quantcore.create_plugin_manager(disable=["fp16"])
    statuses = {i.name: i.status for i in manager.plugin_infos()}
    assert statuses["fp16"] == "disabled" and statuses["int8"] == "loaded"
    with pytest.raises(quantcore.UnknownSchemeError):
        quantcore.quantize(nn.Linear(2, 2), "fp16", plugin_manager=manager)

    monkeypatch.setenv(quantcore.DISABLE_ENV_VAR, "int8, observers")
    manager = quantcore.create_plugin_manager()
    statuses = {i.name: i.status for i in manager.plugin_infos()}
    assert statuses["int8"] == "disabled" and statuses["observers"] == "disabled"
    assert statuses["fp16"] == "loaded"
    with pytest.raises(quantcore.UnknownSchemeError):
        quantcore.quantize(nn.Linear(2, 2), "int8", disable_plugins=["fp16"])


def test_quantize_builds_a_fresh_manager_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    result = quantcore.quantize(nn.Linear(2, 2), disable_plugins=["fp16"])
    assert "fp16" not in result.report.plugins
    assert "fp16" in quantcore.quantize(nn.Linear(2, 2)).report.plugins


def _plugin(hook: str, items: object) -> object:
    namespace: dict[str, object] = {}

    def impl() -> object:
        if isinstance(items, Exception):
            raise items
        return items

    impl.__name__ = hook
    namespace[hook] = quantcore.plugin.hookimpl(impl)
    return type("InlinePlugin", (), {k: staticmethod(v) for k, v in namespace.items()})


def test_duplicate_names_are_an_error_naming_both(
    plugin_manager: quantcore.QuantcorePluginManager,
) -> None:
    observer = quantcore.plugin.Observer(name="minmax", compute=lambda t, **kw: None)  # type: ignore[arg-type,return-value]
    plugin_manager.register_plugin(
        _plugin("quantcore_observers", [observer]), "copycat", distribution="copycat-dist"
    )
    with pytest.raises(quantcore.PluginConflictError) as info:
        plugin_manager.registry()
    message = str(info.value)
    assert "observer 'minmax'" in message
    assert "distribution 'quantcore'" in message and "distribution 'copycat-dist'" in message


def test_malformed_registration_is_reported_and_skipped(
    plugin_manager: quantcore.QuantcorePluginManager,
) -> None:
    plugin_manager.register_plugin(
        _plugin("quantcore_schemes", ["not a scheme"]), "sloppy", distribution="sloppy-dist"
    )
    with pytest.warns(
        quantcore.PluginLoadWarning, match="sloppy.*yielded str, expected quantcore.plugin.Scheme"
    ):
        registry = plugin_manager.registry()
    assert set(registry.schemes) == {"int8", "fp16"}


def test_malformed_registration_is_an_error_in_strict_mode() -> None:
    manager = quantcore.create_plugin_manager(strict=True)
    manager.register_plugin(
        _plugin("quantcore_schemes", [42]), "sloppy", distribution="sloppy-dist"
    )
    with pytest.raises(quantcore.InvalidRegistrationError, match="sloppy-dist"):
        manager.registry()


def test_hook_that_raises_is_reported_with_plugin_and_distribution(
    plugin_manager: quantcore.QuantcorePluginManager,
) -> None:
    plugin_manager.register_plugin(
        _plugin("quantcore_observers", RuntimeError("hook exploded")),
        "exploder",
        distribution="exploder-dist",
    )
    with pytest.warns(
        quantcore.PluginLoadWarning, match="'exploder'.*'exploder-dist'.*hook exploded"
    ):
        registry = plugin_manager.registry()
    assert "minmax" in registry.observers
    assert {i.name: i.status for i in plugin_manager.plugin_infos()}["exploder"] == "failed"


def test_registration_records_are_frozen_and_validated() -> None:
    observer = quantcore.plugin.Observer(name="x", compute=lambda t, **kw: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(AttributeError):
        observer.name = "y"  # type: ignore[misc]
    with pytest.raises(ValueError, match="non-empty"):
        quantcore.plugin.Observer(name="", compute=lambda t, **kw: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="exactly one of convert= or keep_reason="):
        quantcore.plugin.LayerMapper(name="m", layer_kind="k", matches=lambda m: True)


def test_managers_share_no_state() -> None:
    first = quantcore.create_plugin_manager()
    first.register_plugin(_plugin("quantcore_observers", []), "extra")
    second = quantcore.create_plugin_manager()
    assert second.get_plugin("extra") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert set(second.registry().schemes) == {"int8", "fp16"}
