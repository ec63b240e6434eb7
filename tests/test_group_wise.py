"""Group-wise weight quantization: the spec vocabulary, the shared affine functions, a third-party
INT4 scheme installed through its own distribution's entry point (no kernel edit), and int8 with a
per-group override; everything saved and loaded back bit for bit."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import quantcore
from quantcore.float_view import DequantizedView
from quantcore.plugin import Granularity, WeightSpec

PLUGIN_SOURCE = Path(__file__).parent / "plugins_int4"


@pytest.fixture
def int4_manager(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[quantcore.QuantcorePluginManager]:
    """The installed plugins plus the test distribution ``quantcore-test-int4``, discovered
    through its ``quantcore.plugins`` entry point like any installed package."""
    info = tmp_path / "quantcore_test_int4-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: quantcore-test-int4\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text("[quantcore.plugins]\nint4 = quantcore_test_int4\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(PLUGIN_SOURCE))
    yield quantcore.create_plugin_manager()
    sys.modules.pop("quantcore_test_int4", None)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(64, 96)
        self.down = nn.Linear(96, 32, bias=False)
        self.odd = nn.Linear(48, 8)  # 48 inputs: not a multiple of 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.down(torch.relu(self.up(x)))
        return out


def _net() -> nn.Module:
    torch.manual_seed(0)
    return Net().eval()


def test_spec_vocabulary() -> None:
    spec = WeightSpec(Granularity.PER_GROUP, symmetric=False, group_size=32)
    assert spec.describe() == "per_group(32), asymmetric"
    with pytest.raises(ValueError, match="positive group_size"):
        WeightSpec(Granularity.PER_GROUP)
    with pytest.raises(ValueError, match="goes with granularity per_group"):
        WeightSpec(Granularity.PER_CHANNEL, group_size=32)


def test_affine_functions_round_trip_per_group() -> None:
    torch.manual_seed(0)
    weight = torch.randn(6, 16) * torch.linspace(0.1, 10, 16)  # groups with different ranges
    registry = quantcore.create_plugin_manager().registry()
    spec = WeightSpec(Granularity.PER_GROUP, symmetric=True, group_size=4)
    params = quantcore.plugin.affine_params(weight, spec, registry.observer("minmax"), -127, 127)
    assert params.scale.shape == (6, 4)
    q = quantcore.plugin.quantize_affine(
        weight, params.scale, None, group_size=4, qmin=-127, qmax=127, dtype=torch.int8
    )
    back = quantcore.plugin.dequantize_affine(q, params.scale, None, group_size=4)
    step = quantcore.plugin.expand_params(params.scale, weight, 0, 4)
    assert bool(((back - weight).abs() <= step / 2 + 1e-6).all())
    assert q.abs().amax(dim=1).min() == 127  # every group's largest value uses the full range
    with pytest.raises(quantcore.plugin.LayerSkipped, match="groups of 5"):
        quantcore.plugin.group_view(weight, 0, 5)


def test_int4_plugin_from_a_test_distribution_round_trips(
    int4_manager: quantcore.QuantcorePluginManager, tmp_path: Path
) -> None:
    info = {i.name: i for i in quantcore.list_plugins(int4_manager)}["int4"]
    assert info.distribution == "quantcore-test-int4" and info.status == "loaded"
    model = _net()
    result = quantcore.quantize(model, "w4g32", plugin_manager=int4_manager)
    lines = {line.name: line for line in result.report}
    assert lines["up"].kernel == "int4-test-linear-reference"
    assert (
        lines["up"].granularity
        == "weights per_group(32), asymmetric; activations float (weight-only)"
    )
    assert lines["odd"].status == "skipped" and "groups of 32" in (lines["odd"].reason or "")
    state = result.state_dict
    assert state["up.weight"].dtype == torch.uint8 and state["up.weight"].shape == (96, 32)
    assert state["up.weight_scale"].shape == (96, 2) and state["down.weight_scale"].shape == (32, 3)
    assert result.module is not None
    assert torch.allclose(result.module.up.weight, model.up.weight, atol=0.1)  # float view
    assert isinstance(result.module.up.weight, DequantizedView)  # its shape found on meta
    assert result.module.up.weight.shape == (96, 64)
    x = torch.randn(4, 64)
    with torch.no_grad():
        got, expected = result.module(x), model(x)
    assert float((got - expected).norm() / expected.norm()) < 0.1

    path = quantcore.save(result, tmp_path / "q.pt")
    manifest = quantcore.read_quantized(path).manifest
    recorded = {layer.name: layer.spec.weight for layer in manifest.layers}
    assert recorded["up"] == WeightSpec(Granularity.PER_GROUP, False, "minmax", 0, 32)
    with torch.device("meta"):
        skeleton = Net()
    loaded = quantcore.load(path, skeleton, plugin_manager=int4_manager)
    with torch.no_grad():
        assert torch.equal(loaded(x), got)
    for key, tensor in state.items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def test_int4_plugin_on_a_state_dict_gives_the_module_s_tensors(
    int4_manager: quantcore.QuantcorePluginManager,
) -> None:
    model = _net()
    from_module = quantcore.quantize(model, "int4-test", plugin_manager=int4_manager).state_dict
    from_dict = quantcore.quantize(
        model.state_dict(), "int4-test", output="state_dict", plugin_manager=int4_manager
    )
    assert from_module.keys() == from_dict.keys()
    for key, tensor in from_module.items():
        assert torch.equal(from_dict[key], tensor), key


def test_int8_with_a_per_group_override(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 16), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    overrides = {"0": {"group_size": 4}, "1": {"granularity": "per_group", "group_size": 8}}
    result = quantcore.quantize(model, overrides=overrides)
    lines = {line.name: line for line in result.report}
    assert (
        lines["1"].granularity is not None and "per_group(8), symmetric" in lines["1"].granularity
    )
    assert lines["1"].kernel == "int8-linear-reference"  # the fast GEMMs take per-channel scales
    assert lines["0"].kernel == "int8-embedding-reference"
    state = result.state_dict
    assert state["0.weight_scale"].shape == (20, 4) and state["1.weight_scale"].shape == (16, 2)
    tokens = torch.randint(0, 20, (3, 5))
    with torch.no_grad():
        got, expected = result.module(tokens), model(tokens)  # type: ignore[misc]
    assert float((got - expected).norm() / expected.norm()) < 0.03
    finer = quantcore.quantize(model, overrides={"0": {"group_size": 1}}).state_dict
    coarse = quantcore.quantize(model).state_dict
    error = {  # a group of one element is exact: groups refine the per-row scale
        name: float((q.dequantize() - model[0].weight.detach()).abs().max())
        for name, q in (("group", finer), ("row", coarse))
        for q in [_embedding_weight(q)]
    }
    assert error["group"] < 1e-6 < error["row"]
    path = quantcore.save(result, tmp_path / "q.safetensors")
    loaded = quantcore.load(path, model)
    with torch.no_grad():
        assert torch.equal(loaded(tokens), got)


def _embedding_weight(state: dict[str, torch.Tensor]) -> quantcore.plugin.QuantizedWeight:
    registry = quantcore.create_plugin_manager().registry()
    scale = state["0.weight_scale"]
    spec = (
        WeightSpec(Granularity.PER_GROUP, False, group_size=16 // scale.shape[1])
        if scale.dim() == 2
        else WeightSpec(Granularity.PER_CHANNEL, False)
    )
    return quantcore.plugin.QuantizedWeight(
        "int8",
        state["0.weight"],
        scale,
        state["0.weight_zero_point"],
        spec,
        registry.scheme("int8").dequantize_weight,
    )
