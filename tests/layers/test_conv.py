"""nn.Conv1d / nn.Conv2d / nn.Conv3d, INT8 and FP16."""

from __future__ import annotations

import pytest
import torch
from layer_checks import check_layer, relative_error
from quantcore_layers import QuantizedConv
from torch import nn

import quantcore

SCHEMES = ["int8", "fp16"]
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
        model, (x,), scheme, plugin_manager, kinds={"": "conv"}, check_dtype=variant < 2
    )
    assert isinstance(quantized, QuantizedConv)
    with torch.no_grad():  # unbatched input, as nn.Conv*d accepts
        assert relative_error(quantized(x[0]), model(x[0])) < 0.05


def test_conv_int8_weights_are_per_output_channel(plugin_manager) -> None:
    model = nn.Conv2d(3, 6, 3)
    quantized = quantcore.quantize(model, "int8", output="module", plugin_manager=plugin_manager)
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
        model, (x,), scheme, plugin_manager, kinds={"0": "conv", "3": "conv", "7": "linear"}
    )
    batch_norm = quantized[1]
    assert batch_norm.num_batches_tracked.dtype == torch.long  # non-float buffers left as they are
    assert [line.status for line in report if line.name == "1"] == ["kept"]


def test_transposed_convolutions_are_reported_not_quantized(plugin_manager) -> None:
    model = nn.Sequential(nn.ConvTranspose2d(4, 4, 3), nn.Conv2d(4, 4, 1))
    report = quantcore.quantize(model, "int8", plugin_manager=plugin_manager).report
    lines = {line.name: line for line in report}
    assert lines["0"].status == "skipped" and "no mapper" in (lines["0"].reason or "")
    assert lines["1"].status == "quantized"
