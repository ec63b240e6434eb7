"""Fault injection: make the quantization of layer k fail, for every k of a model. Each time the
exception is a clean ``LayerQuantizationError`` naming the layer, the original is bit-identical,
no half-built quantized module survives, torch's global state is unchanged and the plugin manager
keeps its plugins.

Faults are injected generically, so new layer kinds are covered as they arrive: a test plugin
copies every loaded layer mapper at a higher priority and wraps its ``convert`` (the fault strikes
after the real mapper built its replacement), and a test scheme wraps int8's ``quantize_weight``
(the fault strikes on the n-th weight, mid-layer for layers with several weights).
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import quantcore
from reliability.helpers import Tally, TorchState, meddle_with_torch_state

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import fingerprint


class InjectedFault(RuntimeError):
    pass


def varied_model() -> nn.Module:
    """Every layer kind the installed mappers know, plus ones they may not: the plan decides."""
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.norm = nn.LayerNorm(8)
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.norm(x + self.attn(x, x, x, need_weights=False)[0]))

    model = nn.Sequential(
        nn.Linear(8, 8), Block(), nn.Conv1d(4, 4, 1), nn.GRU(8, 8, batch_first=True)
    )
    model.add_module("head", nn.Linear(8, 3))
    model.add_module("embed", nn.Embedding(10, 8))
    return model


class FaultyMappers:
    """Copies of every mapper in ``registry`` that fail after converting layer number ``fail_at``."""

    def __init__(self, registry: quantcore.plugin.Registry, fail_at: int) -> None:
        self.registry, self.fail_at, self.calls = registry, fail_at, 0
        self.built: list[weakref.ref[nn.Module]] = []

    def _wrap(self, convert: Callable[..., Any]) -> Callable[..., Any]:
        def faulty(*args: Any) -> Any:
            out = convert(*args)
            index, self.calls = self.calls, self.calls + 1
            if isinstance(out, nn.Module):
                self.built.append(weakref.ref(out))
            if index == self.fail_at:
                meddle_with_torch_state()
                raise InjectedFault(f"fault injected in layer #{index}")
            return out

        return faulty

    @quantcore.plugin.hookimpl
    def quantcore_layer_mappers(self) -> Iterator[quantcore.plugin.LayerMapper]:
        for mapper in self.registry.layer_mappers:
            if mapper.convert is None:
                continue
            yield dataclasses.replace(
                mapper,
                name=f"faulty-{mapper.name}",
                priority=mapper.priority + 100_000,
                convert=self._wrap(mapper.convert),
                convert_state_dict=None
                if mapper.convert_state_dict is None
                else self._wrap(mapper.convert_state_dict),
            )


class FaultyScheme:
    """int8 under another name, failing on its ``fail_at``-th quantize_weight call."""

    def __init__(self, registry: quantcore.plugin.Registry, fail_at: int) -> None:
        self.base, self.fail_at, self.calls = registry.scheme("int8"), fail_at, 0

    @quantcore.plugin.hookimpl
    def quantcore_schemes(self) -> Iterator[quantcore.plugin.Scheme]:
        def quantize_weight(*args: Any) -> quantcore.plugin.QuantizedWeight:
            index, self.calls = self.calls, self.calls + 1
            if index == self.fail_at:
                meddle_with_torch_state()
                raise InjectedFault(f"fault injected in weight #{index}")
            return self.base.quantize_weight(*args)

        yield dataclasses.replace(
            self.base,
            name="faulty",
            aliases=(),
            torch_dtypes=(),
            default=False,
            quantize_weight=quantize_weight,
        )


def live_quantized_modules() -> int:
    gc.collect()
    from quantcore.plugin import QuantizedModule

    return sum(1 for o in gc.get_objects() if issubclass(type(o), QuantizedModule))


def _attempt(
    obj: object, manager: quantcore.QuantcorePluginManager, dtype: str
) -> tuple[str, str] | None:
    """Quantize; on failure return (error type, message) with the exception already dropped."""
    try:
        result = quantcore.quantize(obj, dtype, plugin_manager=manager)
    except quantcore.QuantcoreError as exc:
        assert isinstance(exc, quantcore.LayerQuantizationError), repr(exc)
        assert isinstance(exc.cause, InjectedFault)
        return type(exc).__name__, str(exc)
    del result
    return None


def _state_dict_digest(state_dict: dict[str, torch.Tensor]) -> dict[str, bytes]:
    return {
        k: v.detach().clone().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        for k, v in state_dict.items()
    }


@pytest.mark.parametrize("where", ["mapper", "scheme"])
@pytest.mark.parametrize("input_kind", ["module", "state_dict"])
def test_every_layer_fails_cleanly(where: str, input_kind: str, tally: Tally) -> None:
    base = quantcore.create_plugin_manager()
    registry = base.registry()
    model = varied_model()
    obj: object = model if input_kind == "module" else model.state_dict()
    before = fingerprint(model)
    sd_before = _state_dict_digest(model.state_dict())

    # a dry run counts the layers (or weights) the plan converts
    counter = FaultyMappers(registry, -1) if where == "mapper" else FaultyScheme(registry, -1)
    manager = quantcore.create_plugin_manager()
    manager.register_plugin(counter, "counter")
    dtype = "faulty" if where == "scheme" else "int8"
    assert _attempt(obj, manager, dtype) is None
    total = counter.calls
    assert total >= 3, "the model should offer several layers"

    quantized_before = live_quantized_modules()
    for k in range(total):
        tally.add("faults injected")
        fault = FaultyMappers(registry, k) if where == "mapper" else FaultyScheme(registry, k)
        manager = quantcore.create_plugin_manager()
        manager.register_plugin(fault, "fault")
        plugins_before = manager.list_name_plugin()
        state_before = TorchState.capture()
        failure = _attempt(obj, manager, dtype)
        assert failure is not None, f"fault #{k} was swallowed"
        assert "fault injected" in failure[1] and "was not modified" in failure[1]
        assert TorchState.capture() == state_before, f"fault #{k} changed torch's global state"
        assert manager.list_name_plugin() == plugins_before
        assert fingerprint(model) == before, f"fault #{k} modified the original"
        assert _state_dict_digest(model.state_dict()) == sd_before
        if isinstance(fault, FaultyMappers):
            gc.collect()
            assert all(ref() is None for ref in fault.built), f"fault #{k} leaked a built layer"
        assert live_quantized_modules() == quantized_before, f"fault #{k} leaked modules"
        del fault, manager
    # after all of that, a clean run still gives the same result as before
    clean = quantcore.quantize(obj, plugin_manager=quantcore.create_plugin_manager())
    assert clean.report.quantized
