"""nn.Conv1d / nn.Conv2d / nn.Conv3d, INT8 and FP16."""

from __future__ import annotations

import pytest
import torch
from layer_checks import check_error, check_layer, relative_error
from quantcore_layers import QuantizedConv
from torch import nn

import quantcore

SCHEMES = ["int8", "fp16"]


def opt_in(scheme: str) -> list[dict[str, str]]:
    """INT8 keeps convolutions float by default; an override naming the scheme quantizes them."""
    return [{"layer_type": "conv", "dtype": scheme}]


CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
VARIANTS = [
    {},
    {"stride": 2, "padding": 1, "bias": False},
    {"groups": 2, "dilation": 2, "padding": "same"},
    {"groups": 4, "padding": 1, "padding_mode": "reflect"},
    {"padding": 2, "padding_mode": "circular", "stride": 2},
    {"padding": 1, "padding_mode": "replicate", "padding_mode_dummy": None},
    {"padding": "valid"},
]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("variant", range(len(VARIANTS)))
def test_conv_variants(scheme: str, dims: int, variant: int, plugin_manager) -> None:
    torch.manual_seed(variant * 3 + dims)
    options = {k: v for k, v in VARIANTS[variant].items() if k != "padding_mode_dummy"}
    model = CONVS[dims](4, 8, 3, **options)
    size = {1: (2, 4, 11), 2: (2, 4, 9, 8), 3: (2, 4, 6, 5, 7)}[dims]
    x = torch.relu(torch.randn(size))  # conv inputs are mostly post-activation
    quantized, _, _ = check_layer(
        model,
        (x,),
        scheme,
        plugin_manager,
        kinds={"": "conv"},
        check_dtype=variant < 2,
        overrides=opt_in(scheme),
    )
    assert isinstance(quantized, QuantizedConv)
    with torch.no_grad():  # unbatched input, as nn.Conv*d accepts
        check_error(scheme, relative_error(quantized(x[0]), model(x[0])))


def test_conv_int8_weights_are_per_output_channel(plugin_manager) -> None:
    model = nn.Conv2d(3, 6, 3)
    quantized = quantcore.quantize(
        model, "int8", output="module", plugin_manager=plugin_manager, overrides=opt_in("int8")
    )
    assert quantized._buffers["weight"].dtype == torch.int8
    assert quantized.weight.shape == model.weight.shape
    assert quantized.weight_scale.shape == (6,)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_small_cnn(scheme: str, plugin_manager) -> None:
    torch.manual_seed(9)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()
    x = torch.randn(2, 3, 12, 12)
    quantized, report, _ = check_layer(
        model,
        (x,),
        scheme,
        plugin_manager,
        kinds={"0": "conv", "3": "conv", "7": "linear"},
        overrides=opt_in(scheme),
    )
    batch_norm = quantized[1]
    assert batch_norm.num_batches_tracked.dtype == torch.long  # non-float buffers left as they are
    assert [line.status for line in report if line.name == "1"] == ["kept"]


def test_transposed_convolutions_are_reported_not_quantized(plugin_manager) -> None:
    model = nn.Sequential(nn.ConvTranspose2d(4, 4, 3), nn.Conv2d(4, 4, 1))
    report = quantcore.quantize(
        model, "int8", plugin_manager=plugin_manager, overrides=opt_in("int8")
    ).report
    lines = {line.name: line for line in report}
    assert lines["0"].status == "skipped" and "no mapper" in (lines["0"].reason or "")
    assert lines["1"].status == "quantized"


def test_int8_keeps_convolutions_float_by_default_with_the_measured_reason(plugin_manager) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    int8 = quantcore.quantize(model, "int8", plugin_manager=plugin_manager)
    lines = {line.name: line for line in int8.report}
    assert lines["0"].status == "kept" and lines["0"].layer_kind == "conv"
    assert "MobileNet-v2" in (lines["0"].reason or "") and "dtype='int8'" in (
        lines["0"].reason or ""
    )
    assert type(int8.module[0]) is nn.Conv2d and lines["2"].status == "quantized"  # type: ignore[index]
    from_state_dict = quantcore.quantize(model.state_dict(), "int8", plugin_manager=plugin_manager)
    assert [line.status for line in from_state_dict.report] == ["kept", "quantized"]
    assert from_state_dict.state_dict["0.weight"].dtype == torch.float32
    fp16 = quantcore.quantize(model, "fp16", plugin_manager=plugin_manager)
    assert [line.status for line in fp16.report] == ["quantized", "quantized"]
