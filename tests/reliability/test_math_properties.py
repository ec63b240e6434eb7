"""Property-based tests of the quantization math: for random shapes, dtypes and value ranges
(zeros, denormals, huge and tiny magnitudes, single outliers, constant rows) the dequantized values
stay within the scheme's error bound, scales are finite and positive, and no NaN appears unless
the input had one (a weight holding NaN/Inf is refused with ``LayerSkipped``)."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given
from quantcore_fp16 import dequantize_weight as fp16_dequantize
from quantcore_fp16 import quantize_weight as fp16_quantize
from quantcore_int8.quantization import (
    dequantize_weight,
    fake_quantize_activation,
    quantize_activation,
    quantize_weight,
)

import quantcore
from quantcore.plugin import ActivationSpec, Granularity, WeightSpec
from reliability.helpers import Tally, slow_settings

F32 = torch.finfo(torch.float32)
F16 = torch.finfo(torch.float16)
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# magnitudes that stress the arithmetic: denormal, tiny, ordinary, huge (near the dtype's max)
MAGNITUDES = (0.0, 1e-44, 1e-39, 1e-30, 1e-8, 1e-3, 1.0, 1e3, 1e20, 1e37, 3e38)


def _minmax() -> quantcore.plugin.Observer:
    return quantcore.create_plugin_manager().registry().observer("minmax")


MINMAX = _minmax()


@st.composite
def weights(draw: st.DrawFn, dtypes: tuple[torch.dtype, ...] = DTYPES) -> torch.Tensor:
    """A finite weight tensor of 1-4 dims whose rows have very different, adversarial ranges."""
    dtype = draw(st.sampled_from(dtypes))
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=ndim, max_size=ndim)))
    finfo = torch.finfo(dtype)
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=gen, dtype=torch.float64)
    rows = shape[0]
    row_scale = torch.tensor(
        [draw(st.sampled_from(MAGNITUDES)) for _ in range(rows)], dtype=torch.float64
    ).reshape(-1, *([1] * (ndim - 1)))
    values = base * row_scale
    pattern = draw(st.sampled_from(["random", "constant_rows", "outlier", "one_sided", "zeros"]))
    if pattern == "constant_rows":
        values = row_scale.expand(shape).clone() * draw(st.sampled_from([1.0, -1.0]))
    elif pattern == "outlier":
        flat = values.reshape(-1)
        flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(MAGNITUDES)) * 1e3
    elif pattern == "one_sided":
        values = values.abs()
    elif pattern == "zeros":
        values = torch.zeros(shape, dtype=torch.float64)
    values = values.clamp(-finfo.max, finfo.max)  # finite in the target dtype
    return values.to(dtype)


def _per_element(values: torch.Tensor, like: torch.Tensor, axis: int = 0) -> torch.Tensor:
    if values.dim() == 0:
        return values.expand(like.shape)
    shape = [1] * like.dim()
    shape[axis] = -1
    return values.reshape(shape).expand(like.shape)


def _check_int8(weight: torch.Tensor, spec: WeightSpec) -> None:
    try:
        qw = quantize_weight(weight, spec, MINMAX)
    except quantcore.plugin.LayerSkipped as skip:
        # allowed only for what int8 cannot represent: values beyond float32's range
        assert weight.dtype == torch.float64, skip.reason
        assert float(weight.abs().max()) > F32.max, skip.reason
        return
    assert qw.data.dtype == torch.int8 and qw.data.shape == weight.shape
    assert qw.scale is not None and qw.scale.dtype == torch.float32
    assert bool(torch.isfinite(qw.scale).all()), "scale must be finite"
    assert bool((qw.scale > 0).all()), "scale must be positive"
    low, high = (-127, 127) if spec.symmetric else (-128, 127)
    assert int(qw.data.min()) >= low and int(qw.data.max()) <= high
    restored = dequantize_weight(qw)
    assert not bool(restored.isnan().any()), "NaN from a finite weight"
    exact = weight.to(torch.float64)
    step = _per_element(qw.scale.to(torch.float64), exact, spec.axis)
    error = (restored.to(torch.float64) - exact).abs()
    # half a step, plus float32 rounding of the product (and of the input if it was float64)
    bound = step * 0.5 * (1 + 1e-5) + exact.abs() * 2e-7 + 1e-45
    worst = float((error - bound).max())
    assert worst <= 0, f"error exceeds the bound by {worst} (spec {spec})"


@given(
    weight=weights(),
    symmetric=st.booleans(),
    granularity=st.sampled_from([Granularity.PER_CHANNEL, Granularity.PER_TENSOR]),
)
def test_int8_weight_round_trip_within_half_a_step(
    weight: torch.Tensor, symmetric: bool, granularity: Granularity, tally: Tally
) -> None:
    tally.add("math property cases")
    _check_int8(weight, WeightSpec(granularity, symmetric, "minmax", axis=0))


@given(weight=weights(dtypes=(torch.float32, torch.float64)), symmetric=st.booleans())
def test_int8_any_axis(weight: torch.Tensor, symmetric: bool, tally: Tally) -> None:
    tally.add("math property cases")
    axis = weight.dim() - 1
    _check_int8(weight, WeightSpec(Granularity.PER_CHANNEL, symmetric, "minmax", axis=axis))


@given(weight=weights())
def test_fp16_round_trip_within_half_an_ulp(weight: torch.Tensor, tally: Tally) -> None:
    tally.add("math property cases")
    spec = WeightSpec(Granularity.NONE, True, None)
    try:
        qw = fp16_quantize(weight, spec, None)
    except quantcore.plugin.LayerSkipped as skip:
        assert float(weight.abs().max()) > F16.max, skip.reason
        assert "float16 range" in skip.reason
        return
    assert qw.data.dtype == torch.float16
    restored = fp16_dequantize(qw).to(torch.float64)
    assert bool(torch.isfinite(restored).all())
    exact = weight.to(torch.float64)
    # half an ulp relative to the value, or half the smallest float16 subnormal near zero
    bound = exact.abs() * 2.0**-11 + 2.0**-25
    assert bool(((restored - exact).abs() <= bound).all())


@given(
    weight=weights(),
    poison=st.sampled_from([math.nan, math.inf, -math.inf]),
    scheme=st.sampled_from(["int8", "fp16"]),
    data=st.data(),
)
def test_non_finite_weights_are_refused(
    weight: torch.Tensor, poison: float, scheme: str, data: st.DataObject, tally: Tally
) -> None:
    tally.add("math property cases")
    poisoned = weight.clone()
    flat = poisoned.view(-1)
    flat[data.draw(st.integers(0, flat.numel() - 1))] = poison
    with pytest.raises(quantcore.plugin.LayerSkipped, match="NaN or Inf"):
        if scheme == "int8":
            quantize_weight(poisoned, WeightSpec(), MINMAX)
        else:
            fp16_quantize(poisoned, WeightSpec(Granularity.NONE, True, None), None)


@st.composite
def activations(draw: st.DrawFn) -> torch.Tensor:
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    seed = draw(st.integers(0, 2**31 - 1))
    magnitude = draw(st.sampled_from(MAGNITUDES))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    limit = torch.finfo(dtype).max
    x = (x * magnitude).clamp(-limit, limit)
    if draw(st.booleans()):
        x = x.abs()
    return x.to(dtype)


@given(
    x=activations(),
    symmetric=st.booleans(),
    granularity=st.sampled_from([Granularity.PER_TOKEN, Granularity.PER_TENSOR]),
)
def test_activation_round_trip_within_half_a_step(
    x: torch.Tensor, symmetric: bool, granularity: Granularity, tally: Tally
) -> None:
    tally.add("math property cases")
    spec = ActivationSpec(granularity, symmetric)
    _, scale, _ = quantize_activation(x, spec)
    assert bool(torch.isfinite(scale).all()) and bool((scale > 0).all())
    restored = fake_quantize_activation(x, spec).to(torch.float64)
    assert not bool(restored.isnan().any()), "NaN from a finite activation"
    exact = x.to(torch.float64)
    error = (restored - exact).abs()
    bound = scale.to(torch.float64) * 0.5 * (1 + 1e-5) + exact.abs() * 2e-7 + 1e-45
    assert bool((error <= bound).all())


@pytest.mark.slow
@slow_settings(600)
@given(
    weight=weights(),
    symmetric=st.booleans(),
    granularity=st.sampled_from([Granularity.PER_CHANNEL, Granularity.PER_TENSOR]),
)
def test_int8_weight_round_trip_long_run(
    weight: torch.Tensor, symmetric: bool, granularity: Granularity, tally: Tally
) -> None:
    tally.add("math property cases (slow)")
    _check_int8(weight, WeightSpec(granularity, symmetric, "minmax", axis=0))
