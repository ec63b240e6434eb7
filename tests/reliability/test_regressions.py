"""One test per failure the reliability suites found (docs/reliability.md lists them)."""

from __future__ import annotations

import torch
from quantcore_int8.quantization import (
    dequantize_weight,
    fake_quantize_activation,
    quantize_weight,
)

import quantcore
from quantcore import ActivationSpec, Granularity, WeightSpec

F32_MAX = torch.finfo(torch.float32).max


def _minmax() -> quantcore.Observer:
    return quantcore.create_plugin_manager().registry().observer("minmax")


def test_float32_max_weight_dequantizes_finite() -> None:
    """Found by test_int8_weight_round_trip_within_half_a_step: 127 * (max / 127) rounded past
    float32's limit and the weight dequantized to inf."""
    weight = torch.tensor([[F32_MAX, -F32_MAX / 3]])
    for symmetric in (True, False):
        restored = dequantize_weight(quantize_weight(weight, WeightSpec(symmetric=symmetric), _minmax()))
        assert bool(torch.isfinite(restored).all())
        assert float(restored[0, 0]) > F32_MAX * 0.99


def test_asymmetric_range_wider_than_float32_gets_a_finite_scale() -> None:
    """Found by test_int8_any_axis: (high - low) overflowed to inf for a row spanning
    [-8.8e37, 3.4e38]; the scale was inf and every value dequantized to 0 or NaN."""
    weight = torch.tensor([[3.4e38, -8.8e37, -3.0e38]])
    qw = quantize_weight(weight, WeightSpec(symmetric=False), _minmax())
    assert qw.scale is not None and bool(torch.isfinite(qw.scale).all())
    restored = dequantize_weight(qw)
    assert bool(((restored - weight).abs() <= qw.scale * 0.5 * (1 + 1e-5) + weight.abs() * 2e-7).all())

    x = torch.tensor([[-3.0e38, 3.0e38, 1.0]])
    restored_x = fake_quantize_activation(x, ActivationSpec(Granularity.PER_TOKEN, symmetric=False))
    assert not bool(restored_x.isnan().any())  # was NaN: (0 - zero_point) * inf
    assert bool(torch.isfinite(restored_x).all())


def test_float64_weight_beyond_float32_range_is_skipped_with_a_reason() -> None:
    """Found by test_int8_weight_round_trip_within_half_a_step: a float64 weight of 4.6e38 got an
    inf float32 scale and silently quantized to zeros."""
    import pytest

    weight = torch.tensor([[4.6e38, 1.0]], dtype=torch.float64)
    with pytest.raises(quantcore.LayerSkipped, match="float32 range"):
        quantize_weight(weight, WeightSpec(), _minmax())
    model = torch.nn.Linear(2, 1).double()
    with torch.no_grad():
        model.weight.copy_(weight)
    report = quantcore.quantize(model).report
    assert report.skipped[0].reason and "float32 range" in report.skipped[0].reason
