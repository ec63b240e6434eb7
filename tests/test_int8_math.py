"""Error bounds of the int8 math: weights quantized ahead of time, activations per call."""

from __future__ import annotations

import pytest
import torch
from oracles import reciprocal_rounding_row
from quantcore_int8.quantization import (
    dequantize_weight,
    fake_quantize_activation,
    quantize_activation,
    quantize_weight,
)

import quantcore
from quantcore.plugin import ActivationSpec, Granularity, WeightSpec


@pytest.fixture
def minmax(plugin_manager: quantcore.QuantcorePluginManager) -> quantcore.plugin.Observer:
    return plugin_manager.registry().observer("minmax")


def _scale_per_element(qw: quantcore.plugin.QuantizedWeight, like: torch.Tensor) -> torch.Tensor:
    assert qw.scale is not None
    if qw.scale.dim() == 0:
        return qw.scale.expand_as(like)
    return qw.scale.reshape(-1, *([1] * (like.dim() - 1))).expand_as(like)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", [Granularity.PER_CHANNEL, Granularity.PER_TENSOR])
@pytest.mark.parametrize("shape", [(16, 32), (8, 3, 3, 3), (1, 1), (5, 1)])
def test_round_trip_error_is_at_most_half_a_step(
    minmax: quantcore.plugin.Observer,
    symmetric: bool,
    granularity: Granularity,
    shape: tuple[int, ...],
) -> None:
    torch.manual_seed(0)
    weight = torch.randn(shape) * torch.logspace(-3, 2, shape[0]).reshape(
        -1, *([1] * (len(shape) - 1))
    )
    qw = quantize_weight(weight, WeightSpec(granularity, symmetric), minmax)
    assert qw.data.dtype == torch.int8
    restored = dequantize_weight(qw)
    step = _scale_per_element(qw, weight)
    assert torch.all((restored - weight).abs() <= step * 0.5 + 1e-6 * weight.abs())
    assert torch.all(torch.isfinite(qw.scale)) and torch.all(qw.scale > 0)  # type: ignore[arg-type]
    if symmetric:
        assert qw.zero_point is None
        assert int(qw.data.min()) >= -127  # restricted range keeps signs exact
    else:
        assert qw.zero_point is not None


def test_per_channel_beats_per_tensor_on_unequal_rows(minmax: quantcore.plugin.Observer) -> None:
    torch.manual_seed(0)
    weight = torch.randn(32, 64)
    weight[0] *= 100  # one outlier channel
    per_channel = dequantize_weight(
        quantize_weight(weight, WeightSpec(Granularity.PER_CHANNEL), minmax)
    )
    per_tensor = dequantize_weight(
        quantize_weight(weight, WeightSpec(Granularity.PER_TENSOR), minmax)
    )
    err_channel = (per_channel[1:] - weight[1:]).abs().mean()
    err_tensor = (per_tensor[1:] - weight[1:]).abs().mean()
    assert err_channel * 10 < err_tensor


@pytest.mark.parametrize("symmetric", [True, False])
def test_all_zero_rows_round_trip_exactly(
    minmax: quantcore.plugin.Observer, symmetric: bool
) -> None:
    weight = torch.zeros(4, 8)
    weight[1] = torch.linspace(-1, 1, 8)
    qw = quantize_weight(weight, WeightSpec(Granularity.PER_CHANNEL, symmetric), minmax)
    restored = dequantize_weight(qw)
    assert torch.equal(restored[0], torch.zeros(8))
    assert torch.equal(restored[2:], torch.zeros(2, 8))
    assert torch.all(qw.scale > 0)  # type: ignore[operator]


def test_extremes_are_represented_exactly_when_symmetric(minmax: quantcore.plugin.Observer) -> None:
    weight = torch.tensor([[-3.0, 0.0, 3.0, 1.5]])
    restored = dequantize_weight(quantize_weight(weight, WeightSpec(), minmax))
    assert restored[0, 0] == -3.0 and restored[0, 2] == 3.0 and restored[0, 1] == 0.0


def test_asymmetric_keeps_one_sided_ranges_finer(minmax: quantcore.plugin.Observer) -> None:
    torch.manual_seed(0)
    weight = torch.rand(8, 256)  # all positive, as after a ReLU
    sym = dequantize_weight(quantize_weight(weight, WeightSpec(symmetric=True), minmax))
    asym = dequantize_weight(quantize_weight(weight, WeightSpec(symmetric=False), minmax))
    assert (asym - weight).abs().max() < (sym - weight).abs().max()


def test_tiny_and_denormal_values_give_finite_positive_scales(
    minmax: quantcore.plugin.Observer,
) -> None:
    weight = torch.tensor([[1e-40, -1e-42, 0.0], [1e-30, 2e-30, -1e-30]])
    qw = quantize_weight(weight, WeightSpec(), minmax)
    assert torch.all(torch.isfinite(qw.scale)) and torch.all(qw.scale > 0)  # type: ignore[arg-type]
    assert torch.all(torch.isfinite(dequantize_weight(qw)))


def test_nan_weight_is_refused_with_a_reason(minmax: quantcore.plugin.Observer) -> None:
    with pytest.raises(quantcore.plugin.LayerSkipped, match="NaN or Inf"):
        quantize_weight(torch.tensor([[1.0, float("nan")]]), WeightSpec(), minmax)


@pytest.mark.parametrize("symmetric", [True, False])
def test_per_token_activation_error_bound(symmetric: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 64) * torch.logspace(-2, 2, 5).reshape(1, 5, 1)
    q, scale, zero_point = quantize_activation(x, ActivationSpec(Granularity.PER_TOKEN, symmetric))
    assert q.dtype == torch.int8 and scale.shape == (3, 5, 1)
    assert (zero_point is None) == symmetric
    restored = fake_quantize_activation(x, ActivationSpec(Granularity.PER_TOKEN, symmetric))
    assert torch.all((restored - x).abs() <= scale * 0.5 + 1e-6)


def test_per_token_scales_follow_each_token() -> None:
    x = torch.stack([torch.full((16,), 0.01), torch.full((16,), 100.0)])
    restored = fake_quantize_activation(x, ActivationSpec(Granularity.PER_TOKEN))
    per_tensor = fake_quantize_activation(x, ActivationSpec(Granularity.PER_TENSOR))
    assert torch.allclose(restored, x, rtol=1e-2)
    assert not torch.allclose(
        per_tensor[0], x[0], rtol=1e-2
    )  # the small token is crushed per tensor


def test_asymmetric_activations_round_the_product_by_the_reciprocal() -> None:
    """round(x * (1 / scale)), as fbgemm and torchao compute it and as the native kernels can
    afford, not round(x / scale): the row holds values where the two differ."""
    row = reciprocal_rounding_row(160)[None]
    spec = ActivationSpec(Granularity.PER_TOKEN, symmetric=False)
    q, scale, zero_point = quantize_activation(row, spec, bits=8)
    assert zero_point is not None

    def rounded(values: torch.Tensor) -> torch.Tensor:
        return (torch.round(values) + zero_point).clamp(-128, 127).to(torch.int8)

    assert torch.equal(q, rounded(row * scale.reciprocal()))
    assert int((q != rounded(row / scale)).sum()) >= 20
