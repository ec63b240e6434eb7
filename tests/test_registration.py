"""Registration strictness: misspelt hooks, name conflicts across names, aliases and torch
dtypes, one default scheme, exactly one reference kernel backend per (op, format), priorities."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import quantcore


def _fresh(strict: bool = False) -> quantcore.QuantcorePluginManager:
    return quantcore.create_plugin_manager(strict=strict)


class Misspelt:
    """A plugin whose author wrote quantcore_scheme (no s): pluggy alone registers it silently."""

    @quantcore.plugin.hookimpl
    def quantcore_scheme(self) -> Iterator[object]:
        yield from ()


def test_misspelt_hook_is_reported_and_the_plugin_skipped() -> None:
    manager = _fresh()
    with pytest.warns(quantcore.PluginLoadWarning) as caught:
        manager.register_plugin(Misspelt(), "typo", distribution="typo-dist")
    message = str(caught[0].message)
    assert "'quantcore_scheme', which is not a quantcore hook" in message
    assert "did you mean 'quantcore_schemes'" in message and "'typo-dist'" in message
    assert manager.get_plugin("typo") is None
    assert {i.name: i.status for i in manager.plugin_infos()}["typo"] == "failed"
    manager.check_pending()  # nothing left pending: later plugins register normally


def test_misspelt_hook_is_an_error_in_strict_mode() -> None:
    manager = _fresh(strict=True)
    with pytest.raises(quantcore.PluginLoadError, match="quantcore_scheme"):
        manager.register_plugin(Misspelt(), "typo")
    manager.check_pending()


def _int8(registry: quantcore.plugin.Registry) -> quantcore.plugin.Scheme:
    return registry.scheme("int8")


class CopyScheme:
    """int8 under another name, with whatever else a test changes."""

    def __init__(self, base: quantcore.plugin.Scheme, **changes: object) -> None:
        fields = {"aliases": (), "torch_dtypes": (), "default": False, **changes}
        self.scheme = dataclasses.replace(base, **fields)  # type: ignore[arg-type]

    @quantcore.plugin.hookimpl
    def quantcore_schemes(self) -> Iterator[quantcore.plugin.Scheme]:
        yield self.scheme


@pytest.mark.parametrize(
    ("changes", "word"),
    [
        ({"name": "qint8"}, "qint8"),  # its name is int8's alias
        ({"name": "mine", "aliases": ("Half",)}, "half"),  # its alias is fp16's (any case)
        ({"name": "mine", "torch_dtypes": (torch.float16,)}, "torch.float16"),
    ],
)
def test_scheme_names_aliases_and_torch_dtypes_share_one_namespace(
    changes: dict[str, object], word: str
) -> None:
    manager = _fresh()
    manager.register_plugin(CopyScheme(_int8(manager.registry()), **changes), "copy")
    with pytest.raises(quantcore.PluginConflictError) as info:
        manager.registry()
    message = str(info.value)
    assert f"{word!r} is registered twice" in message
    assert "plugin 'copy'" in message and "distribution 'quantcore'" in message


def test_two_default_schemes_conflict() -> None:
    manager = _fresh()
    manager.register_plugin(CopyScheme(_int8(manager.registry()), name="mine", default=True), "c")
    with pytest.raises(quantcore.PluginConflictError, match="two schemes are marked default"):
        manager.registry()


def test_default_scheme_is_the_one_a_plugin_marks() -> None:
    registry = _fresh().registry()
    assert registry.default_scheme().name == "int8"
    result = quantcore.quantize(nn.Linear(4, 4), plugin_manager=_fresh())
    assert result.report.scheme == "int8" and result.report.config is not None
    assert (
        result.report.config.dtype == "int8" and result.report.config.source("dtype") == "default"
    )


def test_no_default_scheme_says_to_pass_dtype() -> None:
    manager = quantcore.create_plugin_manager(disable=["int8"])
    with pytest.raises(quantcore.UnknownSchemeError, match="no loaded scheme is marked default"):
        quantcore.quantize(nn.Linear(4, 4), plugin_manager=manager)
    assert (
        quantcore.quantize(nn.Linear(4, 4), "fp16", plugin_manager=manager).report.scheme == "fp16"
    )


def test_unknown_torch_dtype_lists_the_accepted_ones() -> None:
    with pytest.raises(quantcore.UnknownSchemeError) as info:
        quantcore.quantize(nn.Linear(4, 4), torch.bfloat16)
    assert "torch.qint8 (int8)" in str(info.value) and "torch.float16 (fp16)" in str(info.value)


def _backend(name: str, reference: bool, fmt: str = "int8") -> quantcore.plugin.KernelBackend:
    return quantcore.plugin.KernelBackend(
        name=name,
        op="linear",
        weight_format=fmt,
        prepare=lambda r: None,
        reference=reference,  # type: ignore[arg-type,return-value]
    )


class Backends:
    def __init__(self, *backends: quantcore.plugin.KernelBackend) -> None:
        self.backends = backends

    @quantcore.plugin.hookimpl
    def quantcore_kernel_backends(self) -> Iterator[quantcore.plugin.KernelBackend]:
        yield from self.backends


def test_a_second_reference_backend_for_one_op_and_format_conflicts() -> None:
    manager = _fresh()
    manager.register_plugin(Backends(_backend("my-oracle", True)), "mine", distribution="my-dist")
    with pytest.raises(quantcore.PluginConflictError) as info:
        manager.registry()
    message = str(info.value)
    assert "op 'linear' on 'int8' weights has two reference=True backends" in message
    assert "'int8-linear-reference'" in message and "'my-oracle'" in message


def test_backends_without_a_reference_are_skipped() -> None:
    manager = _fresh()
    manager.register_plugin(
        Backends(_backend("fast-toy", False, "toy"), _backend("fast-int8", False)), "mine"
    )
    with pytest.warns(quantcore.PluginLoadWarning, match="'fast-toy' serves op 'linear' on 'toy'"):
        registry = manager.registry()
    names = {b.name for b in registry.kernel_backends}
    assert "fast-toy" not in names and "fast-int8" in names  # int8 has its reference
    assert registry.provided["mine"] == {"kernel backend": ("fast-int8",)}


def test_backends_without_a_reference_are_an_error_in_strict_mode() -> None:
    manager = _fresh(strict=True)
    manager.register_plugin(Backends(_backend("fast-toy", False, "toy")), "mine")
    with pytest.raises(quantcore.InvalidRegistrationError, match="no reference=True backend"):
        manager.registry()


def test_every_builtin_op_and_format_has_exactly_one_reference() -> None:
    registry = _fresh().registry()
    pairs = {(b.op, b.weight_format) for b in registry.kernel_backends}
    for op, fmt in pairs:
        candidates = registry.kernel_candidates(op, fmt)
        if all(b.layer_reference for b in candidates):
            assert op == "recurrent" and not any(b.reference for b in candidates)
            continue  # QuantizedRNN's step loop is the reference
        assert [b.reference for b in candidates].count(True) == 1
        assert candidates[-1].reference  # the oracle is the last resort


def test_an_op_whose_layers_are_the_reference_needs_no_reference_backend() -> None:
    manager = _fresh(strict=True)
    backend = quantcore.plugin.KernelBackend(
        name="fast-sequence",
        op="my-sequence",
        weight_format="int8",
        prepare=lambda r: None,  # type: ignore[arg-type,return-value]
        layer_reference=True,
    )
    manager.register_plugin(Backends(backend), "mine")
    assert "fast-sequence" in {b.name for b in manager.registry().kernel_backends}
    with pytest.raises(ValueError, match="exclude each other"):
        quantcore.plugin.KernelBackend(
            name="x", op="o", weight_format="f", prepare=lambda r: None,  # type: ignore[arg-type,return-value]
            reference=True, layer_reference=True,
        )  # fmt: skip


def test_priorities_are_integers_on_a_named_scale() -> None:
    assert (
        quantcore.plugin.Priority.FALLBACK
        < quantcore.plugin.Priority.DEFAULT
        < quantcore.plugin.Priority.BUILTIN
    )
    assert quantcore.plugin.Priority.BUILTIN < quantcore.plugin.Priority.PREFERRED
    with pytest.raises(TypeError, match="priority must be an integer"):
        quantcore.plugin.LayerMapper(
            name="m",
            layer_kind="k",
            matches=lambda m: True,
            keep_reason="x",
            priority="high",  # type: ignore[arg-type]
        )
    mapper = quantcore.plugin.LayerMapper(
        name="m",
        layer_kind="k",
        matches=lambda m: True,
        keep_reason="x",
        priority=quantcore.plugin.Priority.PREFERRED,
    )
    assert mapper.priority == 200
