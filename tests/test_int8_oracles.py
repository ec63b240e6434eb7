"""The int8 numbers against independent oracles (tests/oracles.py: the formulas in float64, and
torch's own quantize_per_channel/per_tensor): stored weight scales, zero points and integers,
per-token activation parameters, the activation width per CPU, and every int8 linear kernel's
output. Each kernel check runs at the CPU's width and on a simulated CPU without AVX512-VNNI
(7-bit activations), so both paths are tested on every machine."""

from __future__ import annotations

import os

import oracles
import pytest
import quantcore_native
import torch
from quantcore_int8 import cpu_gemms as int8_gemms
from quantcore_int8.quantization import quantize_activation
from torch import nn

import quantcore
from quantcore.plugin import ActivationSpec, Granularity, KernelRequest, WeightSpec
from tests.conftest import ACTIVATION_WIDTHS, use_activation_width

CPU = torch.device("cpu")
INT8_LINEAR = (
    "int8-linear-reference",
    "int8-linear-native",
    "int8-linear-fbgemm+onednn",
    "int8-linear-onednn",
    "int8-linear-fbgemm",
)
F32_RTOL = 5e-7  # a float32 scale computed with up to three roundings


def assert_weight_follows_formula(
    weight: torch.Tensor,
    data: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    *,
    symmetric: bool,
    axis: int | None,
    what: str = "",
) -> None:
    """A stored int8 weight is the formula's: its scale (and zero point), its integers (also as
    torch.quantize_per_channel/per_tensor gives them for the stored parameters), full range."""
    assert data.dtype == torch.int8, what
    assert (zero_point is None) == symmetric, f"{what}: symmetric={symmetric}, zp={zero_point}"
    want_scale, want_zero = oracles.weight_qparams(weight, symmetric=symmetric, axis=axis)
    got_scale = scale.double().reshape(want_scale.shape)
    worst = float(((got_scale - want_scale).abs() / want_scale).max())
    assert worst <= F32_RTOL, f"{what}: scale off the formula by {worst:.3g} (relative)"
    if zero_point is not None:
        assert want_zero is not None
        assert torch.equal(zero_point.long().reshape(want_zero.shape), want_zero), what
    for params in ((want_scale, want_zero), (scale, zero_point)):
        want = oracles.quantize_weight(weight, *params, axis=axis)
        wrong = (data.long() != want.values) & ~want.ambiguous
        assert not bool(wrong.any()), f"{what}: {int(wrong.sum())} integers off the formula"
    by_torch = oracles.torch_quantize_weight(weight, scale, zero_point, axis=axis)
    ambiguous = oracles.quantize_weight(weight, scale, zero_point, axis=axis).ambiguous
    assert not bool(((by_torch != data) & ~ambiguous).any()), f"{what}: differs from torch's"
    # The full range is used: on every row whose scale is not the floor (denormal-only rows
    # quantize to zeros), the largest magnitude is 127 (symmetric), or a negative minimum
    # lands on -128 and a positive maximum on 126 or 127 (asymmetric).
    rows, source = oracles.slices(data, axis), oracles.slices(weight, axis)
    full = want_scale.reshape(-1) > oracles.F32_TINY
    if symmetric:
        assert bool((rows.abs().amax(1)[full] == 127).all()), what
    else:
        assert bool((rows.amin(1)[full & (source.amin(1) < 0)] == -128).all()), what
        assert bool((rows.amax(1)[full & (source.amax(1) > 0)] >= 126).all()), what


def _rows_of_different_ranges(shape: tuple[int, ...]) -> torch.Tensor:
    torch.manual_seed(sum(shape))
    magnitudes = torch.logspace(-6, 3, shape[0]).reshape(-1, *([1] * (len(shape) - 1)))
    weight = torch.randn(shape) * magnitudes
    weight[shape[0] // 2] = 0.0  # an all-zero row
    if shape[0] > 2:
        weight[1] = weight[1].abs()  # a one-sided row
        weight[2].reshape(-1)[0] = 1e-40  # a denormal in a row of small values
    return weight


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", [Granularity.PER_CHANNEL, Granularity.PER_TENSOR])
@pytest.mark.parametrize("shape", [(16, 40), (6, 3, 3, 3), (5, 1), (1, 7)])
def test_weights_follow_the_formula(
    plugin_manager: quantcore.QuantcorePluginManager,
    symmetric: bool,
    granularity: Granularity,
    shape: tuple[int, ...],
) -> None:
    registry = plugin_manager.registry()
    weight = _rows_of_different_ranges(shape)
    spec = WeightSpec(granularity, symmetric, "minmax", axis=0)
    qw = registry.scheme("int8").quantize_weight(weight, spec, registry.observer("minmax"))
    assert qw.scale is not None
    axis = 0 if granularity is Granularity.PER_CHANNEL else None
    assert_weight_follows_formula(
        weight, qw.data, qw.scale, qw.zero_point, symmetric=symmetric, axis=axis
    )


class _EveryKind(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(24, 12)
        self.embedding = nn.Embedding(30, 24)
        self.bag = nn.EmbeddingBag(30, 24)
        self.conv = nn.Conv2d(3, 8, 3)
        self.lstm = nn.LSTM(24, 10)
        self.attention = nn.MultiheadAttention(24, 4)
        with torch.no_grad():
            self.linear.weight[3] = 0.0
            self.linear.weight[5] *= 40.0  # an outlier channel


def _float_sources(model: _EveryKind) -> dict[str, tuple[torch.Tensor, bool]]:
    """quantized weight name -> (its float source, symmetric): the documented defaults
    (docs/schemes.md): per output row everywhere, symmetric except the lookup tables."""
    q, k, v = model.attention.in_proj_weight.detach().chunk(3)
    return {
        "linear.weight": (model.linear.weight, True),
        "embedding.weight": (model.embedding.weight, False),
        "bag.weight": (model.bag.weight, False),
        "conv.weight": (model.conv.weight, True),
        "lstm.linears.ih_l0.weight": (model.lstm.weight_ih_l0, True),
        "lstm.linears.hh_l0.weight": (model.lstm.weight_hh_l0, True),
        "attention.q_proj.weight": (q, True),
        "attention.k_proj.weight": (k, True),
        "attention.v_proj.weight": (v, True),
        "attention.out_proj.weight": (model.attention.out_proj.weight, True),
    }


def test_quantize_stores_every_layer_kinds_weights_by_the_formula(
    plugin_manager: quantcore.QuantcorePluginManager,
) -> None:
    torch.manual_seed(0)
    model = _EveryKind().eval()
    convs = [{"layer_type": "conv", "dtype": "int8"}]  # opt-in: INT8 keeps them float by default
    result = quantcore.quantize(model, "int8", plugin_manager=plugin_manager, overrides=convs)
    state = result.state_dict
    sources = _float_sources(model)
    assert {k for k, t in state.items() if t.dtype == torch.int8} == set(sources)
    for name, (weight, symmetric) in sources.items():
        assert_weight_follows_formula(
            weight.detach(),
            state[name],
            state[f"{name}_scale"],
            state.get(f"{name}_zero_point"),
            symmetric=symmetric,
            axis=0,
            what=name,
        )


@pytest.mark.parametrize("bits", [8, 7, 4, 2])
@pytest.mark.parametrize("symmetric", [True, False])
def test_per_token_activations_follow_the_formula(bits: int, symmetric: bool) -> None:
    torch.manual_seed(bits)
    x = torch.randn(3, 7, 50) * torch.logspace(-4, 3, 7).reshape(1, 7, 1)
    x[0, 0] = 0.0  # an all-zero token
    x[0, 1] = x[0, 1].abs() + 0.5  # one-sided: its zero point sits at the end of the range
    x[1, 2, 5] = 300.0  # an outlier
    spec = ActivationSpec(Granularity.PER_TOKEN, symmetric=symmetric)
    q, scale, zero_point = quantize_activation(x, spec, bits)
    want = oracles.quantize_activation(x, bits=bits, symmetric=symmetric)
    got_scale = scale.double().reshape(want.scale.shape)
    assert float(((got_scale - want.scale).abs() / want.scale).max()) <= F32_RTOL
    if symmetric:
        assert zero_point is None
    else:
        assert zero_point is not None and want.zero_point is not None
        zp = zero_point.double().reshape(want.zero_point.shape)
        assert not bool(((zp != want.zero_point) & ~want.token_ambiguous).any())
    values = q.long().reshape(want.values.shape)
    assert not bool(((values != want.values) & ~want.ambiguous).any())
    qmin, qmax = oracles.activation_range(bits, symmetric)
    assert int(values.min()) >= qmin and int(values.max()) <= qmax
    if bits == 8:  # torch's per-tensor quantization of each token, for the same parameters
        for t in range(values.shape[0]):
            row = x.reshape(-1, 50)[t]
            s = float(scale.reshape(-1)[t])
            if symmetric:
                by_torch = oracles.torch_quantize_weight(row, torch.tensor(s), None, axis=None)
            else:
                z = int(zero_point.reshape(-1)[t])  # type: ignore[union-attr]
                by_torch = oracles.torch_quantize_weight(
                    row, torch.tensor(s), torch.tensor(z), axis=None
                )
            mismatch = (by_torch.long() != values[t]) & ~want.ambiguous[t]
            assert not bool(mismatch.any()), t


@pytest.mark.parametrize("width", ACTIVATION_WIDTHS)
def test_activation_width_follows_the_cpu(width: str, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = use_activation_width(width, monkeypatch)
    assert int8_gemms.activation_bits(ActivationSpec(), CPU) == expected
    for bits in (2, 7, 8):  # a width the spec fixes is kept, whatever the CPU
        assert int8_gemms.activation_bits(ActivationSpec(bits=bits), CPU) == bits


def _request(
    registry: quantcore.plugin.Registry, *, symmetric: bool, per_tensor: bool, bias: bool
) -> KernelRequest:
    torch.manual_seed(3)
    granularity = Granularity.PER_TENSOR if per_tensor else Granularity.PER_CHANNEL
    weight = torch.randn(48, 96) * torch.logspace(-1, 1, 48).reshape(-1, 1)
    qw = registry.scheme("int8").quantize_weight(
        weight, WeightSpec(granularity, True, "minmax"), registry.observer("minmax")
    )
    activation = ActivationSpec(Granularity.PER_TOKEN, symmetric=symmetric)
    return KernelRequest("linear", qw, torch.randn(48) if bias else None, activation, CPU)


def _inputs(tokens: int) -> torch.Tensor:
    """[2, tokens, 96], or one token alone ([1, 1, 96], the decoding call)."""
    torch.manual_seed(tokens)
    x = torch.randn(1 if tokens == 1 else 2, tokens, 96)
    x[..., 3] *= 20  # an outlier channel, as transformer activations have
    if tokens > 1:
        x[0, 0] = 0.0  # an all-zero token
        x[1, 1] = x[1, 1].abs()  # a one-sided token (post-ReLU)
    return x


def serving_backend(
    registry: quantcore.plugin.Registry, name: str, request: KernelRequest
) -> quantcore.plugin.KernelBackend:
    """The named backend, which must serve ``request``: skipped only where this torch build
    lacks it (or the native kernels are not built, unless QUANTCORE_REQUIRE_NATIVE=1, as in CI);
    an available backend that refuses is a failure, not a skip."""
    (backend,) = (b for b in registry.kernel_backends if b.name == name)
    if not backend.is_available():
        if "native" in name:
            reason = quantcore_native.unavailable_reason()
            assert os.environ.get("QUANTCORE_REQUIRE_NATIVE", "") in ("", "0"), reason
            pytest.skip(f"{name}: native kernels are off: {reason}")
        pytest.skip(f"{name} is not available in this torch build")
    assert backend.supports(request), f"{name} is available but refuses {request.activation}"
    return backend


def _oracle(request: KernelRequest, x: torch.Tensor, bits: int) -> oracles.LinearOracle:
    weight, activation = request.weight, request.activation
    assert weight.scale is not None and activation is not None
    return oracles.int8_linear(
        x, weight.data, weight.scale, request.bias, bits=bits, symmetric=activation.symmetric
    )


def _single_token_shortcut(name: str, tokens: int, symmetric: bool) -> bool:
    """fbgemm quantizes a lone asymmetric token itself, rounding its scale and zero point its
    own way: documented to stay within 2e-3 of the output's largest value (docs/schemes.md)."""
    return "fbgemm" in name and tokens == 1 and not symmetric


@pytest.mark.parametrize("width", ACTIVATION_WIDTHS)
@pytest.mark.parametrize("name", INT8_LINEAR)
# 1000 tokens: 2000 rows, more than fbgemm's row block (384 with VNNI) on each of several threads
@pytest.mark.parametrize("tokens", [1, 5, 40, 150, 1000])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(("per_tensor", "bias"), [(False, True), (True, False)])
def test_int8_linear_kernels_compute_the_float64_oracle(
    plugin_manager: quantcore.QuantcorePluginManager,
    monkeypatch: pytest.MonkeyPatch,
    width: str,
    name: str,
    tokens: int,
    symmetric: bool,
    per_tensor: bool,
    bias: bool,
) -> None:
    bits = use_activation_width(width, monkeypatch)
    registry = plugin_manager.registry()
    request = _request(registry, symmetric=symmetric, per_tensor=per_tensor, bias=bias)
    backend = serving_backend(registry, name, request)
    x = _inputs(tokens)
    got = backend.prepare(request)(x)
    oracle = _oracle(request, x, bits)
    if _single_token_shortcut(name, tokens, symmetric):
        error = float((got.double() - oracle.value).abs().max() / oracle.value.abs().max())
        assert error < 2e-3, error
    else:
        oracles.assert_linear_matches(got, oracle, what=f"{name}, {width}")
        reference = serving_backend(registry, INT8_LINEAR[0], request).prepare(request)(x)
        scale = float(reference.abs().max())
        assert torch.allclose(got, reference, rtol=1e-5, atol=1e-6 * scale), "vs the reference"


@pytest.mark.parametrize("width", ACTIVATION_WIDTHS)
@pytest.mark.parametrize("tokens", [1, 7, 100])
def test_a_quantized_linear_computes_the_oracle(
    plugin_manager: quantcore.QuantcorePluginManager,
    monkeypatch: pytest.MonkeyPatch,
    width: str,
    tokens: int,
) -> None:
    """End to end: the layer quantize() builds (default spec, chosen kernel) computes the
    oracle of its stored weights, with per-token asymmetric activations at the CPU's width."""
    bits = use_activation_width(width, monkeypatch)
    torch.manual_seed(4)
    layer = nn.Linear(64, 40).eval()
    result = quantcore.quantize(layer, "int8", plugin_manager=plugin_manager)
    assert result.module is not None
    state = result.state_dict
    x = torch.randn(tokens, 64) * 3 + 1
    with torch.inference_mode():
        got = result.module(x)
    oracle = oracles.int8_linear(
        x,
        state["weight"],
        state["weight_scale"],
        state["bias"],
        bits=bits,
        symmetric=False,
    )
    if _single_token_shortcut(result.module.kernel_name, tokens, False):
        assert float((got.double() - oracle.value).abs().max()) < 2e-3 * float(
            oracle.value.abs().max()
        )
    else:
        oracles.assert_linear_matches(got, oracle, what=result.module.kernel_name)
