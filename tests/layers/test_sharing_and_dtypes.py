"""Shared modules and weights, parametrized weights, and submodules on other dtypes."""

from __future__ import annotations

import oracles
import pytest
import torch
from layer_checks import check_error, relative_error
from torch import nn
from torch.nn.utils import parametrizations

import quantcore

SCHEMES = ["int8", "fp16"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_module_used_twice_stays_one_module(scheme: str, plugin_manager) -> None:
    shared = nn.Conv1d(4, 4, 3, padding=1)
    lstm = nn.LSTM(4, 4)
    model = nn.ModuleDict({"a": shared, "b": shared, "rnn": lstm, "rnn2": lstm})
    quantized = quantcore.quantize(model, scheme, output="module", plugin_manager=plugin_manager)
    assert quantized["a"] is quantized["b"]
    assert quantized["rnn"] is quantized["rnn2"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_weight_shared_by_two_layers_of_one_kind(scheme: str, plugin_manager) -> None:
    a, b = nn.Linear(8, 8), nn.Linear(8, 8)
    b.weight = a.weight
    result = quantcore.quantize(nn.Sequential(a, b), scheme, plugin_manager=plugin_manager)
    assert result.module is not None
    assert result.module[0]._buffers["weight"] is result.module[1]._buffers["weight"]
    assert any("stays shared" in note for note in result.report.layers[1].notes)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_weight_norm_parametrizations_are_quantized_from_their_value(
    scheme: str, plugin_manager
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        parametrizations.weight_norm(nn.Linear(8, 8)),
        parametrizations.weight_norm(nn.Conv1d(8, 8, 3)),
        parametrizations.weight_norm(nn.Linear(6, 8)),  # computed weights: ids could be reused
    )
    torch.nn.init.normal_(model[0].parametrizations.weight.original0, 3.0)
    convs = [{"layer_type": "conv", "dtype": scheme}]  # INT8 keeps convolutions float by default
    result = quantcore.quantize(model, scheme, plugin_manager=plugin_manager, overrides=convs)
    q = result.module
    assert q is not None
    for i in range(3):
        line = result.report.layers[[x.name for x in result.report.layers].index(str(i))]
        assert line.status == "quantized"
        assert any("parametrized" in note for note in line.notes)
    with torch.no_grad():
        x = torch.randn(2, 8)
        check_error(scheme, relative_error(q[0](x), model[0](x)))
        y = torch.randn(2, 8, 5)
        check_error(scheme, relative_error(q[1](y), model[1](y)))
        assert q[2].weight.shape == (8, 6)
    assert "0.parametrizations.weight.original0" not in q.state_dict()


def test_deprecated_weight_norm_hook_is_skipped_with_reason(plugin_manager) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        layer = torch.nn.utils.weight_norm(nn.Linear(4, 4))
    model = nn.Sequential(layer, nn.Linear(4, 4))
    result = quantcore.quantize(model, "int8", plugin_manager=plugin_manager)
    line = result.report.layers[0]
    assert line.status == "skipped" and "parametrizations" in (line.reason or "")
    assert result.module is not None
    assert result.module(torch.randn(1, 4)).shape == (1, 4)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_submodules_keep_their_dtype(
    scheme: str, dtype: torch.dtype, plugin_manager
) -> None:
    torch.manual_seed(1)

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(20, 8).to(dtype)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True).to(dtype)
            self.rnn = nn.GRU(8, 8, batch_first=True).to(dtype)
            self.conv = nn.Conv1d(8, 8, 3, padding=1).to(dtype)
            self.head = nn.Linear(8, 4)  # float32

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            x = self.embed(tokens)
            x = self.attn(x, x, x, need_weights=False)[0]
            x = self.rnn(x)[0]
            x = self.conv(x.transpose(1, 2)).transpose(1, 2)
            assert x.dtype == dtype
            return self.head(x.float())

    model = Mixed().eval()
    tokens = torch.randint(0, 20, (2, 6))
    convs = [{"layer_type": "conv", "dtype": scheme}]  # INT8 keeps convolutions float by default
    result = quantcore.quantize(model, scheme, plugin_manager=plugin_manager, overrides=convs)
    assert len(result.report.quantized) == 5
    assert result.module is not None
    with torch.no_grad():
        check_error(scheme, relative_error(result.module(tokens), model(tokens)))


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_reading_weight_gives_dequantized_float_values(dtype: str) -> None:
    """Code that reads ``layer.weight`` directly (a parent, a tied head) gets float values."""

    class ReadsChildWeight(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Embedding(10, 6)
            self.proj = nn.Linear(6, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x @ self.table.weight.T @ self.table.weight)

    torch.manual_seed(0)
    model = ReadsChildWeight()
    result = quantcore.quantize(model, dtype)
    assert result.module is not None
    table = result.module.table
    assert table._buffers["weight"].dtype == (torch.int8 if dtype == "int8" else torch.float16)
    assert table.weight.dtype == torch.float32
    # within half a step of each row's range (int8: per-row asymmetric) or of float16's rounding
    weight = model.table.weight.detach()
    if dtype == "int8":
        scale, _ = oracles.weight_qparams(weight, symmetric=False, axis=0)
        step = scale[:, None]
    else:
        step = weight.abs() * 2.0**-10
    assert bool(((table.weight - weight).abs() <= step * 0.5 * (1 + 1e-5)).all())
    assert result.state_dict["table.weight"].dtype == table._buffers["weight"].dtype
    x = torch.randn(3, 6)
    with torch.no_grad():
        check_error(dtype, relative_error(result.module(x), model(x)))
