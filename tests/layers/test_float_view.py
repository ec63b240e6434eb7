"""``layer.weight`` on a quantized layer: a float tensor dequantized only when its values are used,
so the weight probes models run on every call (dtype checks, torch's fast-path checks) cost
nothing."""

from __future__ import annotations

import copy
import io
import pickle
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from conftest import require_native_kernels
from layer_checks import check_error, relative_error
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import quantcore
from quantcore.float_view import DequantizedView
from quantcore.modules import QuantizedModule

SCHEMES = ["int8", "fp16"]


@contextmanager
def counting_dequantizations(model: nn.Module) -> Iterator[list[int]]:
    """Counts the dequantizations of every quantized layer's float views inside the block (not
    the one on the meta device that finds a view's shape)."""
    count = [0]
    saved = []
    for layer in model.modules():
        if isinstance(layer, QuantizedModule):
            saved.append((layer, dict(layer._float_views)))
            for name, (fmt, spec, dequantizer) in layer._float_views.items():

                def counted(weight, dequantizer=dequantizer):  # type: ignore[no-untyped-def]
                    count[0] += not weight.data.is_meta
                    return dequantizer(weight)

                layer._float_views[name] = (fmt, spec, counted)
    try:
        yield count
    finally:
        for layer, views in saved:
            layer._float_views.clear()
            layer._float_views.update(views)


def _quantized_pair(scheme: str) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = nn.ModuleDict({"linear": nn.Linear(12, 8), "table": nn.Embedding(10, 6)}).eval()
    quantized = quantcore.quantize(model, scheme, output="module")
    return model, quantized


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("layer", ["linear", "table"])
def test_reading_the_weight_answers_metadata_without_dequantizing(scheme: str, layer: str) -> None:
    model, quantized = _quantized_pair(scheme)
    with counting_dequantizations(quantized) as count:
        weight = quantized[layer].weight
        assert isinstance(weight, torch.Tensor) and isinstance(weight, DequantizedView)
        assert weight.dtype == torch.float32 and weight.device.type == "cpu"
        assert weight.shape == model[layer].weight.shape
        assert weight.size() == model[layer].weight.size() and weight.dim() == 2
        assert weight.numel() == model[layer].weight.numel() and len(weight) == weight.shape[0]
        assert weight.is_floating_point() and not weight.requires_grad and not weight.is_meta
        assert count[0] == 0
        values = weight + 0
        assert type(values) is torch.Tensor
        assert torch.equal(values, quantized[layer].dequantized())
        assert count[0] == 2  # the view's values once, dequantized() once
        weight * 2, weight.sum(), weight[0]  # the view keeps its values
        assert count[0] == 2


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_view_works_wherever_a_tensor_does(scheme: str) -> None:
    _, quantized = _quantized_pair(scheme)
    layer = quantized["linear"]
    expected = layer.dequantized()
    view = layer.weight
    assert torch.equal(torch.from_numpy(view.numpy()), expected)
    assert view.tolist() == expected.tolist()
    assert repr(view) == repr(expected)
    for copied in (copy.deepcopy(view), pickle.loads(pickle.dumps(view))):
        assert type(copied) is torch.Tensor and torch.equal(copied, expected)
    buffer = io.BytesIO()
    torch.save(view, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer), expected)
    x = torch.randn(3, 12)
    assert torch.equal(F.linear(x, layer.weight), F.linear(x, expected))
    assert torch.equal(x @ layer.weight.T, x @ expected.T)
    parameter = nn.Parameter(layer.weight)  # detaches, then sets requires_grad
    assert parameter.requires_grad and torch.equal(parameter.detach() + 0, expected)
    changed = layer.weight
    changed.mul_(0)  # a copy: the layer keeps its weight
    assert torch.equal(layer.weight + 0, expected) and bool((changed == 0).all())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_torchs_transformer_fast_path_check_dequantizes_nothing(scheme: str) -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, norm_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    quantized = quantcore.quantize(model, scheme, output="module")
    x = torch.randn(2, 7, 32)
    with torch.no_grad(), counting_dequantizations(quantized) as count:
        got = quantized(x)
    assert count[0] == 0  # it reads linear1.weight etc. on every call, and takes its slow path
    check_error(scheme, relative_error(got, model(x).detach()))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_per_call_dtype_check_dequantizes_nothing(scheme: str) -> None:
    class ChecksDtype(nn.Module):  # what T5's feed-forward does
        def __init__(self) -> None:
            super().__init__()
            self.wi, self.wo = nn.Linear(16, 32), nn.Linear(32, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(self.wi(x))
            if isinstance(self.wo.weight, torch.Tensor) and h.dtype != self.wo.weight.dtype:
                h = h.to(self.wo.weight.dtype)
            return self.wo(h)

    torch.manual_seed(0)
    model = ChecksDtype().eval()
    quantized = quantcore.quantize(model, scheme, output="module")
    x = torch.randn(4, 16)
    with torch.no_grad(), counting_dequantizations(quantized) as count:
        got = quantized(x)
    assert count[0] == 0
    check_error(scheme, relative_error(got, model(x).detach()))


class _ReadsWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.proj.weight.T + self.proj(x)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_compiled_code_and_modes_get_plain_tensors(scheme: str) -> None:
    torch.manual_seed(0)
    quantized = quantcore.quantize(_ReadsWeight().eval(), scheme, output="module")
    x = torch.randn(3, 6)
    with torch.no_grad():
        expected = quantized(x)
        compiled = torch.compile(quantized, fullgraph=True, backend="aot_eager")
        assert torch.equal(compiled(x), expected)
        with FlopCounterMode(display=False):
            assert type(quantized.proj.weight) is torch.Tensor


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_compiled_model_reading_released_weights_is_one_graph(scheme: str) -> None:
    """The native kernels drop the plain weight after the first call; reading ``.weight`` in a
    compiled forward then unpacks it with an op the graph holds, not a graph break."""
    require_native_kernels()
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    quantized = quantcore.quantize(model, scheme, output="module")
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        expected = quantized(x)
        assert quantized.layers[0].linear1._buffers["weight"].is_meta  # released
        compiled = torch.compile(quantized, fullgraph=True, backend="aot_eager")
        assert torch.equal(compiled(x), expected)
        read = torch.compile(
            lambda: quantized.layers[0].linear1.weight, fullgraph=True, backend="aot_eager"
        )
        assert torch.equal(read(), quantized.layers[0].linear1.dequantized())


def test_a_dequantizer_that_needs_real_values_gets_them() -> None:
    _, quantized = _quantized_pair("int8")
    layer = quantized["linear"]
    fmt, spec, dequantizer = layer._float_views["weight"]

    def needs_values(weight):  # type: ignore[no-untyped-def]
        weight.data.tolist()  # impossible on the meta device
        return dequantizer(weight)

    layer._float_views["weight"] = (fmt, spec, needs_values)
    weight = layer.weight
    assert type(weight) is torch.Tensor  # read as before views existed
    assert torch.equal(weight, layer.dequantized())
