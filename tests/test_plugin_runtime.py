"""The quantized-module runtime as a third-party plugin uses it: a mapper that hands part of its
layer to another mapper (ctx.delegate), and a quantized layer of its own built on QuantizedModule,
both saved and loaded again with no code of quantcore's knowing them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quantcore


class Gate(nn.Module):
    """A model's own layer around a linear one: the kind of wrapper a third party maps."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.proj(x)) * x


class QuantizedGate(nn.Module):
    """A plain module holding the quantized linear another mapper built."""

    def __init__(self, proj: nn.Module) -> None:
        super().__init__()
        self.proj = proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.proj(x)) * x


class ScaledLinear(nn.Module):
    """A layer no built-in mapper knows: ``alpha * (x @ W.T)``."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim, dim) / dim**0.5)
        self.alpha = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * F.linear(x, self.weight)


class QuantizedScaledLinear(quantcore.plugin.QuantizedModule):
    """ScaledLinear on the runtime: its weight runs through the scheme's "linear" kernels."""

    def __init__(
        self, weight: quantcore.plugin.QuantizedWeight, alpha: torch.Tensor, ctx: object
    ) -> None:
        assert isinstance(ctx, quantcore.plugin.ConversionContext)
        super().__init__("linear", ctx.kernel_candidates("linear"))
        self.weight_format, self.weight_spec = weight.format, weight.spec
        self.activation = ctx.spec.activation
        quantcore.plugin.register_weight(self, weight)
        self.register_buffer("alpha", alpha)
        self._prepare_kernel()

    def _kernel_request(self) -> quantcore.plugin.KernelRequest:
        return quantcore.plugin.kernel_request(self, "linear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * self._call_kernel(x)


def _convert_gate(module: nn.Module, ctx: quantcore.plugin.ConversionContext) -> nn.Module:
    assert isinstance(module, Gate)
    return QuantizedGate(ctx.delegate(module.proj))


def _convert_scaled(module: nn.Module, ctx: quantcore.plugin.ConversionContext) -> nn.Module:
    assert isinstance(module, ScaledLinear)
    weight = ctx.quantize_weight(module.weight)
    return QuantizedScaledLinear(weight, ctx.clone(module.alpha.detach()), ctx)


class ThirdParty:
    @quantcore.plugin.hookimpl
    def quantcore_layer_mappers(self) -> Iterator[quantcore.plugin.LayerMapper]:
        yield quantcore.plugin.LayerMapper(
            name="gate",
            layer_kind="linear",
            matches=lambda m: isinstance(m, Gate),
            convert=_convert_gate,
            priority=quantcore.plugin.Priority.PREFERRED,
        )
        yield quantcore.plugin.LayerMapper(
            name="scaled_linear",
            layer_kind="linear",
            matches=lambda m: isinstance(m, ScaledLinear),
            convert=_convert_scaled,
        )


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate = Gate()
        self.scaled = ScaledLinear()
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.scaled(self.gate(x)))
        return out


@pytest.fixture
def manager() -> quantcore.QuantcorePluginManager:
    manager = quantcore.create_plugin_manager()
    manager.register_plugin(ThirdParty(), "third-party")
    return manager


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_third_party_layers_quantize_save_and_load(
    dtype: str, manager: quantcore.QuantcorePluginManager, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = Model().eval()
    x = torch.randn(3, 16)
    result = quantcore.quantize(model, dtype, plugin_manager=manager)
    lines = {line.name: line for line in result.report}
    assert lines["gate"].mapper == "gate" and lines["scaled"].mapper == "scaled_linear"
    assert "gate.proj" not in lines  # part of the gate layer
    for name in ("gate", "scaled"):  # the wrapper reports the kernel of the layer inside it
        assert lines[name].status == "quantized", lines[name]
        assert (lines[name].kernel or "").startswith(f"{dtype}-linear"), lines[name]
    assert result.module is not None
    assert isinstance(result.module.gate.proj, quantcore.plugin.QuantizedLinear)
    with torch.no_grad():
        got, expected = result.module(x), model(x)
    assert float((got - expected).norm() / expected.norm()) < 0.03

    path = quantcore.save(result, tmp_path / "q.pt")
    with torch.device("meta"):
        skeleton = Model()
    loaded = quantcore.load(path, skeleton, plugin_manager=manager)
    with torch.no_grad():
        assert torch.equal(loaded(x), got)
    assert float(loaded.scaled.alpha) == 0.5
    # the float view of the third-party layer's weight works like the built-in layers'
    assert torch.allclose(loaded.scaled.weight, model.scaled.weight, atol=0.05)


def test_delegate_without_a_mapper_skips_the_layer() -> None:
    manager = quantcore.create_plugin_manager(disable=["layers"])
    manager.register_plugin(ThirdParty(), "third-party")
    result = quantcore.quantize(Model(), plugin_manager=manager)
    line = next(line for line in result.report if line.name == "gate")
    assert line.status == "skipped"
    assert line.reason == "no loaded layer mapper converts Linear"


def test_delegate_never_hands_a_layer_back_to_its_own_mapper() -> None:
    class Selfish:
        @quantcore.plugin.hookimpl
        def quantcore_layer_mappers(self) -> Iterator[quantcore.plugin.LayerMapper]:
            yield quantcore.plugin.LayerMapper(
                name="selfish",
                layer_kind="linear",
                matches=lambda m: isinstance(m, nn.Linear),
                convert=lambda m, ctx: ctx.delegate(m),
                priority=quantcore.plugin.Priority.PREFERRED,
            )

    manager = quantcore.create_plugin_manager()
    manager.register_plugin(Selfish(), "selfish")
    result = quantcore.quantize(nn.Sequential(nn.Linear(4, 4)), plugin_manager=manager)
    line = result.report.layers[0]
    assert line.mapper == "selfish" and line.status == "quantized"
    assert line.kernel is not None and line.kernel.startswith("int8-linear")
