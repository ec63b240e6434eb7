"""The fast CPU kernel backends: exact agreement with the reference, the activation width chosen
per CPU, fallback when a backend is missing, no deprecation warnings, pickling."""

from __future__ import annotations

import copy
import math
import os
import pickle
import warnings
from collections.abc import Callable

import pytest
import quantcore_native
import torch
from baselines import SIMULATE_ENV_VAR, check_error
from oracles import reciprocal_rounding_row, relative_error
from quantcore_fp16 import kernels_cpu as fp16_cpu
from quantcore_int8 import cpu_gemms as int8_gemms
from quantcore_int8 import kernels_cpu as int8_cpu
from torch import nn

import quantcore
from quantcore.plugin import ActivationSpec, Granularity, KernelRequest

CPU = torch.device("cpu")
INT8_FAST = ("int8-linear-fbgemm+onednn", "int8-linear-onednn", "int8-linear-fbgemm")


def _request(
    registry: quantcore.plugin.Registry,
    *,
    out_features: int = 48,
    in_features: int = 96,
    bias: bool = True,
    activation: ActivationSpec | None = None,
    per_tensor: bool = False,
) -> KernelRequest:
    torch.manual_seed(1)
    scheme = registry.scheme("int8")
    spec = scheme.layer_specs["linear"]
    weight_spec = spec.weight
    if per_tensor:
        weight_spec = quantcore.plugin.WeightSpec(Granularity.PER_TENSOR, observer="minmax")
    weight = scheme.quantize_weight(
        torch.randn(out_features, in_features), weight_spec, registry.observer("minmax")
    )
    return KernelRequest(
        "linear",
        weight,
        torch.randn(out_features) if bias else None,
        activation or spec.activation,
        CPU,
    )


def _backend(registry: quantcore.plugin.Registry, name: str) -> quantcore.plugin.KernelBackend:
    (backend,) = (b for b in registry.kernel_backends if b.name == name)
    return backend


def _skip_unless_serves(backend: quantcore.plugin.KernelBackend, request: KernelRequest) -> None:
    """Skips only where this torch build lacks the backend: an available backend that refuses
    the request is a failure (a refusal would otherwise hide the kernel from every test)."""
    if not backend.is_available():
        pytest.skip(f"{backend.name} is not available in this torch build")
    assert backend.supports(request), f"{backend.name} is available but refuses the request"


def _inputs(tokens: int, features: int) -> torch.Tensor:
    x = torch.randn(2, tokens, features)
    x[..., 3] *= 20  # an outlier channel, as transformer activations have
    x[0, 0] = 0.0  # an all-zero token
    return x


@pytest.mark.parametrize("name", INT8_FAST)
@pytest.mark.parametrize("tokens", [1, 5, 40, 150])
@pytest.mark.parametrize(("bias", "per_tensor"), [(True, False), (False, True)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_int8_backend_computes_the_reference(
    plugin_manager: quantcore.QuantcorePluginManager,
    name: str,
    tokens: int,
    bias: bool,
    per_tensor: bool,
    symmetric: bool,
) -> None:
    registry = plugin_manager.registry()
    backend = _backend(registry, name)
    activation = ActivationSpec(Granularity.PER_TOKEN, symmetric=symmetric)
    request = _request(registry, bias=bias, per_tensor=per_tensor, activation=activation)
    _skip_unless_serves(backend, request)
    reference = _backend(registry, "int8-linear-reference").prepare(request)
    x = _inputs(tokens, 96)
    expected = reference(x)
    got = backend.prepare(request)(x)
    assert got.shape == expected.shape == (2, tokens, 48)
    # Same integers, same scales: only float summation order differs.
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert not torch.equal(expected, torch.nn.functional.linear(x, torch.zeros(48, 96)))


@pytest.mark.parametrize("name", INT8_FAST)
def test_asymmetric_tokens_are_scaled_by_the_reciprocal(
    plugin_manager: quantcore.QuantcorePluginManager, name: str
) -> None:
    """Tokens whose values divided by the scale would round to other integers than multiplied
    by its reciprocal (the reference's arithmetic): the torch kernels follow the product."""
    registry = plugin_manager.registry()
    backend = _backend(registry, name)
    activation = ActivationSpec(Granularity.PER_TOKEN, symmetric=False)
    request = _request(registry, in_features=160, activation=activation)
    _skip_unless_serves(backend, request)
    row = reciprocal_rounding_row(160, int8_gemms.activation_bits(activation, CPU))
    x = torch.stack([row, row.roll(37), row.flip(0)])
    expected = _backend(registry, "int8-linear-reference").prepare(request)(x)
    got = backend.prepare(request)(x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_activation_width_follows_the_cpu() -> None:
    seven, eight = ActivationSpec(bits=7), ActivationSpec(bits=8)
    assert int8_gemms.activation_bits(seven, CPU) == 7
    assert int8_gemms.activation_bits(eight, CPU) == 8
    assert int8_gemms.activation_bits(ActivationSpec(), torch.device("meta")) == 8
    expected = 8 if int8_gemms.cpu_int8_exact() else 7
    assert int8_gemms.activation_bits(ActivationSpec(), CPU) == expected


def test_self_test_detects_saturation_the_way_the_kernel_behaves() -> None:
    """With 8-bit activations the oneDNN result is exact iff the self-test says so."""
    if not int8_gemms.onednn_available():
        pytest.skip("no oneDNN int8 ops in this torch build")
    if os.environ.get(SIMULATE_ENV_VAR):
        pytest.skip("the self-test is simulated in this run: it cannot match the hardware")
    k = 256
    wq = torch.full((8, k), 127, dtype=torch.int8)
    xu8 = torch.full((3, k), 255, dtype=torch.uint8)  # q = 127 with zero point 128
    y = int8_gemms.onednn_gemm(xu8, 128, int8_gemms.onednn_prepack(wq), torch.ones(8))
    assert (float(y[0, 0]) == 127 * 127 * k) == int8_gemms.onednn_int8_exact()


def test_seven_bit_activations_are_what_the_reference_computes(
    plugin_manager: quantcore.QuantcorePluginManager,
) -> None:
    registry = plugin_manager.registry()
    request = _request(registry, activation=ActivationSpec(bits=7))
    x = _inputs(9, 96)
    reference = _backend(registry, "int8-linear-reference").prepare(request)(x)
    eight = _backend(registry, "int8-linear-reference").prepare(
        _request(registry, activation=ActivationSpec(bits=8))
    )(x)
    assert not torch.allclose(reference, eight, rtol=1e-4, atol=1e-4)  # the width matters
    for name in INT8_FAST:
        backend = _backend(registry, name)
        if backend.is_available():
            assert backend.supports(request), name  # 7 bits are exact on every CPU
            got = backend.prepare(request)(x)
            assert torch.allclose(got, reference, rtol=1e-5, atol=1e-4), name


def test_eight_bits_on_a_saturating_cpu_fall_back_to_the_reference(
    plugin_manager: quantcore.QuantcorePluginManager,
) -> None:
    registry = plugin_manager.registry()
    request = _request(registry, activation=ActivationSpec(bits=8))
    for name in INT8_FAST:
        backend = _backend(registry, name)
        if backend.is_available() and "onednn" in name:
            assert backend.supports(request) == int8_gemms.onednn_int8_exact(), name


def test_unsupported_layouts_are_left_to_the_reference(
    plugin_manager: quantcore.QuantcorePluginManager,
) -> None:
    registry = plugin_manager.registry()
    backend = _backend(registry, "int8-linear-onednn")
    asymmetric = _request(registry, activation=ActivationSpec(symmetric=False))
    assert backend.supports(asymmetric)  # per-token zero points: a rank-1 correction
    per_tensor_act = _request(registry, activation=ActivationSpec(Granularity.PER_TENSOR))
    weight_only = _request(registry)
    weight_only = KernelRequest("linear", weight_only.weight, None, None, CPU)
    meta = KernelRequest("linear", weight_only.weight, None, ActivationSpec(), torch.device("meta"))
    for request in (per_tensor_act, weight_only, meta):
        assert not backend.supports(request)


def _quantize_linear(
    plugin_manager: quantcore.QuantcorePluginManager, dtype: str
) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16)).eval()
    result = quantcore.quantize(model, dtype, plugin_manager=plugin_manager)
    assert result.module is not None
    return model, result.module


def test_missing_fbgemm_falls_back_to_onednn_then_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(quantcore_native, "available", lambda: False)
    monkeypatch.setattr(int8_gemms, "fbgemm_available", lambda: False)
    _, quantized = _quantize_linear(quantcore.create_plugin_manager(), "int8")
    expected_kernel = "int8-linear-onednn" if int8_gemms.onednn_available() else None
    if expected_kernel:
        assert quantized[0].kernel_name == expected_kernel
    x = torch.randn(4, 64)
    with torch.no_grad():
        fast = quantized(x)

    monkeypatch.setattr(int8_gemms, "onednn_available", lambda: False)
    model, quantized = _quantize_linear(quantcore.create_plugin_manager(), "int8")
    result = quantcore.quantize(model, "int8", plugin_manager=quantcore.create_plugin_manager())
    assert {line.kernel for line in result.report.quantized} == {"int8-linear-reference"}
    with torch.no_grad():
        fallback = quantized(x)
        assert torch.allclose(fallback, fast, rtol=1e-5, atol=1e-6 * float(fast.abs().max()))
        check_error("int8", relative_error(fallback, model(x)))


def test_report_names_the_fast_kernel(plugin_manager: quantcore.QuantcorePluginManager) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32))
    result = quantcore.quantize(model, "int8", plugin_manager=plugin_manager)
    (line,) = result.report.quantized
    assert result.module is not None
    assert line.kernel == result.module[0].kernel_name
    if quantcore_native.available():
        assert line.kernel == "int8-linear-native"
    elif int8_gemms.fbgemm_available() and int8_gemms.onednn_available():
        assert line.kernel == "int8-linear-fbgemm+onednn"


def test_fast_kernels_emit_no_warnings(plugin_manager: quantcore.QuantcorePluginManager) -> None:
    for dtype in ("int8", "fp16"):
        _, quantized = _quantize_linear(plugin_manager, dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for tokens in (1, 1100):  # both the few-token and the many-token kernels
                quantized(torch.randn(tokens, 64))


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_prepared_kernels_survive_pickle_copy_and_reload(
    plugin_manager: quantcore.QuantcorePluginManager, dtype: str
) -> None:
    _, quantized = _quantize_linear(plugin_manager, dtype)
    x = torch.randn(3, 64)
    with torch.no_grad():
        expected = quantized(x)  # packs the weights lazily
        restored = pickle.loads(pickle.dumps(quantized))
        copied = copy.deepcopy(quantized)
        reloaded = _quantize_linear(plugin_manager, dtype)[1]
        reloaded.load_state_dict(quantized.state_dict())
        for other in (restored, copied, reloaded):
            assert other[0].kernel_name == quantized[0].kernel_name
            assert torch.equal(other(x), expected)


@pytest.mark.parametrize("tokens", [1, 33, 1100])
def test_fp16_backend_computes_the_reference(
    plugin_manager: quantcore.QuantcorePluginManager, tokens: int
) -> None:
    registry = plugin_manager.registry()
    backend = _backend(registry, "fp16-linear-fbgemm+upcast")
    torch.manual_seed(0)
    scheme = registry.scheme("fp16")
    weight = scheme.quantize_weight(torch.randn(48, 96), scheme.layer_specs["linear"].weight, None)
    request = KernelRequest("linear", weight, torch.randn(48), None, CPU)
    _skip_unless_serves(backend, request)
    x = torch.randn(tokens, 96)
    reference = _backend(registry, "fp16-linear-reference").prepare(request)
    kernel = backend.prepare(request)
    # fbgemm takes inputs of two or more dims as they come (any strides); 1-D is reshaped
    layouts = [x, x.reshape(1, tokens, 96), torch.cat([x, x], dim=1)[:, ::2]]
    if tokens == 1:
        layouts.append(x.reshape(96))
    for layout in layouts:
        got, expected = kernel(layout), reference(layout)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    bf16 = kernel(x.bfloat16())  # other dtypes take the reference's math
    assert bf16.dtype == torch.bfloat16


def test_missing_fp16_kernel_falls_back_to_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quantcore_native, "available", lambda: False)
    monkeypatch.setattr(fp16_cpu, "fbgemm_fp16_available", lambda: False)
    model, quantized = _quantize_linear(quantcore.create_plugin_manager(), "fp16")
    assert quantized[0].kernel_name == "fp16-linear-reference"
    # the reference cannot fuse the following ReLU: the layer applies it after the call
    assert quantized[0].fused_activation == "relu"
    x = torch.randn(2, 64)
    with torch.no_grad():  # float16-rounded weights, float32 math
        expected = torch.nn.functional.linear(x, model[0].weight.half().float(), model[0].bias)
        assert torch.allclose(quantized[0](x), expected.relu(), rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # inductor compiles take ~20 s each on 2 cores
@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_torch_compile_of_a_quantized_model(
    plugin_manager: quantcore.QuantcorePluginManager, dtype: str
) -> None:
    """Inductor compiles the quantization around the GEMM; the GEMM itself stays eager."""
    torch._dynamo.reset()
    _, quantized = _quantize_linear(plugin_manager, dtype)
    compiled = torch.compile(quantized)
    with torch.no_grad():
        for tokens in (1, 2, 1100):  # single-token, few-token and many-token kernels
            x = torch.randn(tokens, 64)
            assert torch.allclose(compiled(x), quantized(x), rtol=1e-5, atol=1e-5)


def test_the_onednn_custom_op_computes_the_onednn_gemm() -> None:
    """The op torch.compile keeps in its graph runs the same GEMM as the eager path, and its
    fake implementation gives the real output's shape and dtype. (torch.library.opcheck cannot
    run here: its checks read storage pointers, which oneDNN's packed weight has none of; the
    slow test below compiles it with fullgraph=True.)"""
    if not int8_gemms.onednn_available():
        pytest.skip("no oneDNN int8 ops in this torch")
    weight = torch.randint(-127, 128, (48, 96), dtype=torch.int8)
    args = (
        torch.randint(0, 128, (5, 96), dtype=torch.uint8),
        3,
        int8_gemms.onednn_prepack(weight),
        torch.rand(48),
        torch.zeros(48, dtype=torch.long),
    )
    expected = int8_gemms.onednn_gemm(*args)
    got = torch.ops.quantcore_int8.onednn_linear(*args)
    assert torch.equal(got, expected)
    with torch.device("meta"):
        fake = int8_cpu._onednn_linear_fake(
            torch.empty(5, 96, dtype=torch.uint8), 3, args[2], torch.empty(48), args[4]
        )
    assert fake.shape == expected.shape and fake.dtype == expected.dtype


def _skip_unless_onednn_serves(layer: nn.Module) -> None:
    """Skips where this torch has no oneDNN int8 ops; where it has them, they must serve."""
    if not int8_gemms.onednn_available():
        pytest.skip("no oneDNN int8 ops in this torch build")
    assert layer.kernel_name in ("int8-linear-fbgemm+onednn", "int8-linear-onednn")


@pytest.mark.slow  # a dynamo trace and an inductor compile
@pytest.mark.parametrize("eager_call_first", [False, True])
def test_the_compiled_int8_model_has_no_graph_break_on_onednn(
    monkeypatch: pytest.MonkeyPatch, eager_call_first: bool
) -> None:
    """The oneDNN GEMM is an op of the graph, its weight packed while tracing when no eager call
    packed it before (compiling first is how most users call torch.compile)."""
    torch._dynamo.reset()
    monkeypatch.setattr(quantcore_native, "available", lambda: False)  # the pure-torch kernels
    _, quantized = _quantize_linear(quantcore.create_plugin_manager(), "int8")
    _skip_unless_onednn_serves(quantized[0])
    x = torch.randn(100, 64)  # above fbgemm's 64 tokens: oneDNN
    with torch.no_grad():
        if eager_call_first:
            quantized(x)
        assert torch._dynamo.explain(quantized)(x).graph_break_count == 0
        compiled = torch.compile(quantized, fullgraph=True)
        assert torch.allclose(compiled(x), quantized(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
@pytest.mark.parametrize("tokens", [1, 2])
def test_calls_fbgemm_serves_are_one_graph_op_under_torch_compile(
    monkeypatch: pytest.MonkeyPatch, dtype: str, tokens: int
) -> None:
    """fbgemm's packed weights are script objects, which graphs cannot hold: a call fbgemm
    serves enters the graph as one opaque op (the layer's eager call, found through its graph
    handle), so decoding under torch.compile has no graph break per layer."""
    torch._dynamo.reset()
    monkeypatch.setattr(quantcore_native, "available", lambda: False)  # the pure-torch kernels
    _, quantized = _quantize_linear(quantcore.create_plugin_manager(), dtype)
    available = int8_gemms.fbgemm_available if dtype == "int8" else fp16_cpu.fbgemm_fp16_available
    if not available():
        pytest.skip(f"no fbgemm {dtype} ops in this torch build")
    assert "fbgemm" in quantized[0].kernel_name, quantized[0].kernel_name
    x = torch.randn(tokens, 64)
    with torch.no_grad():
        assert torch._dynamo.explain(quantized)(x).graph_break_count == 0
        # aot_eager runs the ops' fake implementations while tracing and the real ones after
        compiled = torch.compile(quantized, fullgraph=True, backend="aot_eager")
        assert torch.equal(compiled(x), quantized(x))
        assert torch.equal(compiled(x.reshape(1, tokens, 64)), quantized(x.reshape(1, tokens, 64)))


@pytest.mark.parametrize(
    ("dtype", "unavailable"),
    [
        ("int8", ()),
        ("int8", ("native",)),
        ("int8", ("native", "fbgemm")),
        ("int8", ("native", "onednn")),
        ("int8", ("native", "fbgemm", "onednn")),
        ("fp16", ()),
        ("fp16", ("fbgemm",)),
    ],
)
def test_no_cpu_linear_kernel_is_a_graph_break(
    monkeypatch: pytest.MonkeyPatch, dtype: str, unavailable: tuple[str, ...]
) -> None:
    """What the README promises: torch.compile traces every CPU linear kernel, fast or reference,
    few tokens or many, without a graph break and without a warm-up call."""
    if "native" in unavailable:
        monkeypatch.setattr(quantcore_native, "available", lambda: False)
    if "fbgemm" in unavailable:
        monkeypatch.setattr(int8_gemms, "fbgemm_available", lambda: False)
        monkeypatch.setattr(fp16_cpu, "fbgemm_fp16_available", lambda: False)
    if "onednn" in unavailable:
        monkeypatch.setattr(int8_gemms, "onednn_available", lambda: False)
    _, quantized = _quantize_linear(quantcore.create_plugin_manager(), dtype)
    for tokens in (1, 100):
        torch._dynamo.reset()
        with torch.no_grad():
            explanation = torch._dynamo.explain(quantized)(torch.randn(tokens, 64))
        assert explanation.graph_break_count == 0, (quantized[0].kernel_name, tokens)


def test_a_graph_handle_leads_back_to_its_kernel_while_the_kernel_lives() -> None:
    class Kernel:
        pass

    kernel = Kernel()
    handle = quantcore.plugin.graph_handle(kernel, (48,))
    assert handle.shape == (48, 0) and handle.numel() == 0
    assert quantcore.plugin.kernel_of_handle(handle) is kernel
    del kernel
    with pytest.raises(RuntimeError, match="outlived the quantized layer"):
        quantcore.plugin.kernel_of_handle(handle)
    with pytest.raises(RuntimeError, match="not a live quantcore graph handle"):
        quantcore.plugin.kernel_of_handle(torch.empty(48, 0))


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_inputs_that_require_grad_take_the_differentiable_path(
    plugin_manager: quantcore.QuantcorePluginManager, dtype: str
) -> None:
    _, quantized = _quantize_linear(plugin_manager, dtype)
    x = torch.randn(3, 64)
    with torch.no_grad():
        expected = quantized(x)
    x.requires_grad_(True)
    y = quantized(x)
    assert y.requires_grad and torch.allclose(y, expected, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize("high", [127, 255])
def test_uint8_conversion_keeps_every_value(high: int) -> None:
    """The GEMM input is converted through int8 (7-bit) or int32 (8-bit) for speed; every
    integer in range must come out as the same uint8, whichever way."""
    values = torch.arange(high + 1, dtype=torch.float32).repeat(3, 1)
    got = int8_cpu._to_uint8(values, high)
    assert got.dtype == torch.uint8
    assert torch.equal(got.to(torch.int32), values.to(torch.int32))


@pytest.fixture
def fbgemm_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[int, ...], bool]]:
    """(input shape, reduce_range) of every fbgemm GEMM call the test makes."""
    calls: list[tuple[tuple[int, ...], bool]] = []
    linear = int8_gemms.fbgemm_linear

    def spy(x: torch.Tensor, packed: object, reduce_range: bool) -> torch.Tensor:
        calls.append((tuple(x.shape), reduce_range))
        return linear(x, packed, reduce_range)

    monkeypatch.setattr(int8_gemms, "fbgemm_linear", spy)
    return calls


@pytest.mark.parametrize("name", ["int8-linear-fbgemm+onednn", "int8-linear-fbgemm"])
def test_one_asymmetric_token_goes_to_fbgemm_raw(
    plugin_manager: quantcore.QuantcorePluginManager,
    fbgemm_calls: list[tuple[tuple[int, ...], bool]],
    name: str,
) -> None:
    """Decoding: a single token is handed to fbgemm unquantized (its per-tensor quantization of
    one row is per-token quantization), in one call; its own rounding of scale and zero point
    keeps outputs within 2e-3 of the reference. Two tokens take the exact pinned-rows path."""
    registry = plugin_manager.registry()
    backend = _backend(registry, name)
    request = _request(registry, activation=ActivationSpec(Granularity.PER_TOKEN, symmetric=False))
    _skip_unless_serves(backend, request)
    calls = fbgemm_calls
    kernel = backend.prepare(request)
    reference = _backend(registry, "int8-linear-reference").prepare(request)
    bits = int8_gemms.activation_bits(request.activation, CPU)  # type: ignore[arg-type]
    torch.manual_seed(0)
    worst = 0.0
    for scale in (0.05, 1.0, 30.0):
        for _ in range(10):
            x = torch.randn(1, 1, 96) * scale + 0.3 * scale
            expected = reference(x)
            got = kernel(x)
            assert got.shape == expected.shape == (1, 1, 48)
            worst = max(worst, float((got - expected).abs().max() / expected.abs().max()))
    assert worst < 2e-3, worst
    assert calls == [((1, 1, 96), bits == 7)] * 30  # the token as given, not reshaped
    calls.clear()
    x = torch.randn(2, 96)
    assert torch.allclose(
        kernel(x), reference(x), rtol=1e-5, atol=1e-5 * float(reference(x).abs().max())
    )
    assert calls == [((2 + int8_gemms.SPARE_ROWS, 96), False)]


@pytest.mark.parametrize(
    "make_token",
    [
        lambda t: t.reshape(96),  # 1-D: fbgemm refuses it, so the exact path
        lambda t: t.reshape(1, 96),
        lambda t: t.reshape(1, 1, 1, 96),
        lambda t: torch.cat([t.reshape(96, 1)] * 3, dim=1)[:, 1].reshape(1, 96),  # strided
        lambda t: t.reshape(1, 96).to(torch.bfloat16),
        lambda t: t.reshape(1, 96).to(torch.float64),
    ],
    ids=["1d", "2d", "4d", "strided", "bfloat16", "float64"],
)
def test_a_single_token_in_any_layout_matches_the_reference(
    plugin_manager: quantcore.QuantcorePluginManager,
    fbgemm_calls: list[tuple[tuple[int, ...], bool]],
    make_token: Callable[[torch.Tensor], torch.Tensor],
) -> None:
    """The decode shortcut skips the reshapes and casts of the general path: whatever the
    token's shape, strides and dtype, the output has the reference's shape and dtype and its
    values within the shortcut's 2e-3."""
    registry = plugin_manager.registry()
    backend = _backend(registry, "int8-linear-fbgemm+onednn")
    request = _request(registry, activation=ActivationSpec(Granularity.PER_TOKEN, symmetric=False))
    _skip_unless_serves(backend, request)
    reference = _backend(registry, "int8-linear-reference").prepare(request)
    torch.manual_seed(1)
    x = make_token(torch.randn(96) + 0.2)
    expected = reference(x)
    got = backend.prepare(request)(x)
    assert got.shape == expected.shape and got.dtype == expected.dtype == x.dtype
    error = float((got - expected).abs().max().double() / expected.abs().max().double())
    assert error < (1e-2 if x.dtype == torch.bfloat16 else 2e-3), error
    assert len(fbgemm_calls) == 1
    raw = x.dim() >= 2
    assert (fbgemm_calls[0][0] == tuple(x.shape)) is raw


@pytest.mark.parametrize("name", INT8_FAST)
@pytest.mark.parametrize("tokens", [1, 3, 100])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("poison", [math.nan, math.inf, -math.inf])
def test_a_non_finite_token_gives_its_own_row_non_finite_and_leaves_the_others(
    plugin_manager: quantcore.QuantcorePluginManager,
    name: str,
    tokens: int,
    symmetric: bool,
    poison: float,
) -> None:
    """As the reference: a token holding NaN/Inf gets a non-finite scale, so its row is
    non-finite; no kernel raises (fbgemm's own min/max check refuses NaN) and the other tokens
    are untouched."""
    registry = plugin_manager.registry()
    backend = _backend(registry, name)
    request = _request(
        registry, activation=ActivationSpec(Granularity.PER_TOKEN, symmetric=symmetric)
    )
    _skip_unless_serves(backend, request)
    reference = _backend(registry, "int8-linear-reference").prepare(request)
    x = torch.randn(tokens, 96)
    x[0, 5] = poison
    got = backend.prepare(request)(x)
    expected = reference(x)
    assert not bool(torch.isfinite(expected[0]).any())
    assert not bool(torch.isfinite(got[0]).any())
    if tokens > 1:
        scale = float(expected[1:].abs().max())
        assert torch.allclose(got[1:], expected[1:], rtol=1e-5, atol=1e-5 * scale)


def test_a_near_constant_single_token_takes_the_exact_path(
    plugin_manager: quantcore.QuantcorePluginManager,
    fbgemm_calls: list[tuple[tuple[int, ...], bool]],
) -> None:
    """fbgemm would raise a tiny scale to 6.1e-5 (coarser than the reference): such a token is
    quantized by quantcore itself, exactly."""
    registry = plugin_manager.registry()
    backend = _backend(registry, "int8-linear-fbgemm+onednn")
    request = _request(registry, activation=ActivationSpec(Granularity.PER_TOKEN, symmetric=False))
    _skip_unless_serves(backend, request)
    kernel = backend.prepare(request)
    reference = _backend(registry, "int8-linear-reference").prepare(request)
    x = (torch.rand(1, 96) - 0.5) * 1e-3  # range 1e-3 (0 included): scale about 8e-6 at 7 bits
    expected = reference(x)
    assert torch.allclose(kernel(x), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    # the pinned-rows path (the token plus its spare rows), not the raw token
    assert fbgemm_calls == [((1 + int8_gemms.SPARE_ROWS, 96), False)]
