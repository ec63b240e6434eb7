"""The native int8 kernels (quantcore_int8's C++ extension): checked against a float64 computation
from the quantization formulas, against the reference backend, and as drop-ins inside layers
(release, copies, torch.compile, fallback). Skipped, with the reason, where the extension is not
built; `QUANTCORE_REQUIRE_NATIVE=1` (set by CI) turns that skip into a failure."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import quantcore_native
import torch
from conftest import require_native_kernels
from oracles import reciprocal_rounding_row
from quantcore_fp16 import kernels_native as fp16_native
from quantcore_int8 import kernels_native
from quantcore_int8.cpu_gemms import activation_bits
from quantcore_int8.quantization import activation_range
from torch import nn

import quantcore
from quantcore.plugin import ActivationSpec, Granularity, KernelRequest

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _native_kernels() -> None:
    require_native_kernels()


# ----------------------------------------------------------------------------- the oracle


def _quantized_tokens(
    x: torch.Tensor, bits: int, symmetric: bool, by_division: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token integers, scales and zero points from the formulas (float32, as specified)."""
    qmin, qmax = activation_range(bits, symmetric)
    x = x.reshape(-1, x.shape[-1]).to(torch.float32)
    if symmetric:
        bound = x.abs().amax(1, keepdim=True).clamp_min(1e-30)
        q = torch.round(x * (qmax / bound)).clamp(qmin, qmax)
        return q, bound / qmax, torch.zeros_like(bound)
    low = x.amin(1, keepdim=True).clamp_max(0)
    high = x.amax(1, keepdim=True).clamp_min(0)
    steps = qmax - qmin
    scale = (high / steps - low / steps).clamp_min(torch.finfo(torch.float32).tiny)
    zero = (qmin - torch.round(low / scale)).clamp(qmin, qmax)
    scaled = x / scale if by_division else x * scale.reciprocal()
    return (torch.round(scaled) + zero).clamp(qmin, qmax), scale, zero


def _oracle(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    bits: int,
    symmetric: bool,
    by_division: bool = False,
) -> torch.Tensor:
    """The linear layer from first principles: dequantize both sides, matmul in float64."""
    q, scale, zero = _quantized_tokens(x, bits, symmetric, by_division)
    activations = (q.double() - zero.double()) * scale.double()
    w = weight.double() * weight_scale.double().reshape(-1, 1)
    y = activations @ w.T
    if bias is not None:
        y = y + bias.double()
    return y.reshape(*x.shape[:-1], weight.shape[0])


def _layer(
    out_features: int, in_features: int, symmetric: bool, bias: bool = True, bits: int = 0
) -> tuple[kernels_native.NativeInt8Linear, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(out_features * 1000 + in_features)
    weight = torch.randint(-127, 128, (out_features, in_features), generator=generator)
    weight = weight.to(torch.int8)
    scale = torch.rand(out_features, generator=generator) * 0.01 + 1e-3
    bias_values = torch.randn(out_features, generator=generator) if bias else None
    spec = quantcore.plugin.WeightSpec(Granularity.PER_CHANNEL, symmetric=True, axis=0)
    activation = ActivationSpec(Granularity.PER_TOKEN, symmetric=symmetric, bits=bits or None)
    request = KernelRequest(
        "linear",
        quantcore.plugin.QuantizedWeight("int8", weight, scale=scale, spec=spec),
        bias_values,
        activation,
        CPU,
    )
    assert kernels_native.supports_native(request)
    return kernels_native.NativeInt8Linear(request), weight, scale, bias_values


def _inputs(tokens: int, features: int, seed: int = 0) -> torch.Tensor:
    x = torch.randn(tokens, features, generator=torch.Generator().manual_seed(seed))
    x[:, 3 % features] *= 20  # an outlier channel
    if tokens > 2:
        x[1] = 0.0  # an all-zero token
        x[2] = x[2].abs()  # a one-sided token (zero point at the end of the range)
    return x


def _close(got: torch.Tensor, expected: torch.Tensor, rtol: float = 2e-6) -> bool:
    scale = float(expected.abs().max())
    return bool(torch.allclose(got.double(), expected, rtol=0, atol=rtol * scale))


# -------------------------------------------------------------------------- the linear op


@pytest.mark.parametrize("tokens", [1, 2, 17, 64, 65, 130, 600])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(("out_features", "in_features"), [(48, 96), (33, 97), (300, 1000)])
def test_the_native_linear_computes_the_formulas(
    tokens: int, symmetric: bool, out_features: int, in_features: int
) -> None:
    """Sizes off the vector widths (97 inputs: scalar tails), above fbgemm's blocks (1000), and
    token counts around every threshold: the same integers, exact int32 sums."""
    kernel, weight, scale, bias = _layer(out_features, in_features, symmetric)
    x = _inputs(tokens, in_features)
    got = kernel(x)
    expected = _oracle(x, weight, scale, bias, kernel.bits, symmetric)
    assert got.shape == (tokens, out_features) and got.dtype == torch.float32
    assert _close(got, expected)


@pytest.mark.parametrize("tokens", [1, 130])
def test_a_weight_that_fills_a_huge_page_is_packed_into_one(tokens: int) -> None:
    """Packed weights of 2 MiB and more go into memory mapped for 2 MiB pages (Linux); smaller
    ones stay in fbgemm's own. Either way the results and the unpacked weight are exact."""
    small, small_weight, _, _ = _layer(300, 1000, symmetric=False)
    assert not small.make_packed(small_weight).on_huge_pages
    kernel, weight, scale, bias = _layer(2100, 1024, symmetric=False)  # 2.1 MiB packed
    packed = kernel.make_packed(weight)
    # Linux kernels built with transparent huge pages show this folder; elsewhere fbgemm allocates
    huge_pages = Path("/sys/kernel/mm/transparent_hugepage").is_dir()
    assert packed.on_huge_pages == (sys.platform.startswith("linux") and huge_pages)
    assert torch.equal(packed.unpack(), weight)
    x = _inputs(tokens, 1024)
    assert _close(kernel(x), _oracle(x, weight, scale, bias, kernel.bits, False))


def test_asymmetric_tokens_are_scaled_by_the_reciprocal() -> None:
    """x * (1 / scale), the reference's arithmetic, in the vector code and its scalar tail (160
    features: two blocks of 64 and 32 more): on rows where dividing instead would round some
    20 or more values to other integers, the output follows the product."""
    kernel, weight, scale, bias = _layer(48, 160, symmetric=False)
    row = reciprocal_rounding_row(160, kernel.bits)
    x = torch.stack([row, row.roll(37), row.flip(0)])  # the same range: the same scale
    got = kernel(x)
    assert _close(got, _oracle(x, weight, scale, bias, kernel.bits, False))
    assert not _close(got, _oracle(x, weight, scale, bias, kernel.bits, False, by_division=True))


@pytest.mark.parametrize("symmetric", [True, False])
def test_rounding_ties_go_to_the_even_integer(symmetric: bool) -> None:
    """Values exactly halfway between two steps round as torch.round does (half to even); one
    integer off anywhere moves the output by far more than the tolerance. At the width this
    CPU runs (8 bits, or 7 where int8 GEMMs saturate): the row's range makes the step exactly 1."""
    kernel, weight, scale, _ = _layer(16, 64, symmetric, bias=False)
    bits = kernel.bits
    qmin, qmax = activation_range(bits, symmetric)
    x = torch.zeros(1, 64)
    x[0, 0] = -qmax if symmetric else qmin  # the range: (qmax - qmin) / steps = 1
    x[0, 1] = qmax
    x[0, 2:10] = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 40.5, -39.5])
    q, token_scale, _ = _quantized_tokens(x, bits, symmetric)
    assert float(token_scale) == 1.0
    assert q[0, 2:10].tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 40.0, -40.0]
    assert _close(kernel(x), _oracle(x, weight, scale, None, bits, symmetric), rtol=1e-7)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("poison", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_token_poisons_only_its_own_row(symmetric: bool, poison: float) -> None:
    kernel, weight, scale, bias = _layer(48, 96, symmetric)
    x = _inputs(5, 96)
    x[0, 7] = poison
    got = kernel(x)
    assert bool(torch.isnan(got[0]).all())
    assert _close(got[1:], _oracle(x[1:], weight, scale, bias, kernel.bits, symmetric))


def test_seven_bit_activations_follow_the_formulas() -> None:
    """The width CPUs without VNNI use, run here too (it is the spec's own bits)."""
    for symmetric in (True, False):
        kernel, weight, scale, bias = _layer(48, 96, symmetric, bits=7)
        assert kernel.bits == 7
        x = _inputs(40, 96)
        assert _close(kernel(x), _oracle(x, weight, scale, bias, 7, symmetric))


def test_the_width_self_test_agrees_with_the_cpu_choice() -> None:
    """8-bit activations are served only where the native GEMM computes them exactly."""
    default = ActivationSpec(Granularity.PER_TOKEN, symmetric=False)
    kernel, *_ = _layer(8, 64, symmetric=False)
    assert kernel.bits == activation_bits(default, CPU)
    if not kernels_native.native_int8_exact():
        assert activation_bits(default, CPU) == 7 or not kernels_native.supports_native(
            KernelRequest("linear", _layer(8, 64, False)[0].plain_weight(), None, default, CPU)
        )


@pytest.mark.parametrize("tokens", [130, 600])  # 600 x 300 sums outgrow one chunk
def test_results_do_not_depend_on_the_thread_count(tokens: int) -> None:
    kernel, *_ = _layer(300, 1000, symmetric=False)
    x = _inputs(tokens, 1000)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernel(x)
        torch.set_num_threads(2)
        two = kernel(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_a_long_call_in_chunks_equals_short_calls(activation: str | None, symmetric: bool) -> None:
    """900 tokens of 400 outputs go through in chunks of rows (their int32 sums exceed 256 KiB);
    calls of 50 tokens take the whole-call path. Both give the same bits."""
    _, weight, scale, bias = _layer(400, 256, symmetric)
    spec = quantcore.plugin.WeightSpec(Granularity.PER_CHANNEL, symmetric=True, axis=0)
    request = KernelRequest(
        "linear",
        quantcore.plugin.QuantizedWeight("int8", weight, scale=scale, spec=spec),
        bias,
        ActivationSpec(Granularity.PER_TOKEN, symmetric=symmetric),
        CPU,
        {} if activation is None else {"fused_activation": activation},
    )
    kernel = kernels_native.NativeInt8Linear(request)
    x = _inputs(900, 256)
    whole = kernel(x)
    assert torch.equal(whole, torch.cat([kernel(part) for part in x.split(50)]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_come_back_in_their_dtype(dtype: torch.dtype) -> None:
    kernel, weight, scale, bias = _layer(48, 96, symmetric=False)
    x = _inputs(3, 96).to(dtype)
    got = kernel(x)
    assert got.dtype == dtype
    expected = _oracle(x.float(), weight, scale, bias, kernel.bits, False)
    assert _close(got.float(), expected, rtol=1e-2)


def test_leading_dims_and_strided_inputs() -> None:
    kernel, weight, scale, bias = _layer(48, 96, symmetric=False)
    x = _inputs(24, 96).reshape(4, 6, 96).transpose(0, 1)  # not contiguous
    got = kernel(x)
    assert got.shape == (6, 4, 48)
    assert _close(got, _oracle(x, weight, scale, bias, kernel.bits, False))
    assert kernel(torch.empty(0, 96)).shape == (0, 48)


def test_the_packed_weight_gives_the_exact_int8_values_back() -> None:
    kernel, weight, *_ = _layer(33, 97, symmetric=False)
    assert not kernel.release_plain_weight()  # nothing packed yet: the plain copy is needed
    kernel(_inputs(2, 97))
    assert kernel.release_plain_weight() and kernel.plain is None
    assert torch.equal(kernel.plain_weight().data, weight)


def test_a_wrong_input_width_is_an_error_naming_both() -> None:
    kernel, *_ = _layer(48, 96, symmetric=False)
    with pytest.raises(RuntimeError, match="input has 95 features, the layer expects 96"):
        kernel(torch.randn(2, 95))


# ----------------------------------------------------------------- inside quantized layers


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 48), nn.GELU(), nn.Linear(48, 16)).eval()


def _quantize(model: nn.Module, dtype: str = "int8") -> nn.Module:
    module = quantcore.quantize(model, dtype, plugin_manager=quantcore.create_plugin_manager())
    assert module.module is not None
    return module.module


def test_layers_run_the_native_kernel_and_match_the_pure_torch_kernels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _model()
    quantized = _quantize(model)
    assert quantized[0].kernel_name == "int8-linear-native"
    monkeypatch.setattr(quantcore_native, "available", lambda: False)
    fallback = _quantize(model)
    assert fallback[0].kernel_name != "int8-linear-native"
    for tokens in (1, 8, 100):
        x = torch.randn(tokens, 64)
        with torch.inference_mode():
            assert torch.allclose(quantized(x), fallback(x), rtol=1e-5, atol=1e-5)


def test_a_released_layer_copies_saves_and_pickles_its_exact_weights() -> None:
    quantized = _quantize(_model())
    before = {k: v.clone() for k, v in quantized.state_dict().items()}
    x = torch.randn(5, 64)
    with torch.inference_mode():
        expected = quantized(x)
    assert quantized[0]._buffers["weight"].is_meta  # released after the first call
    for copied in (copy.deepcopy(quantized), pickle.loads(pickle.dumps(quantized))):
        assert copied[0].kernel_name == "int8-linear-native"
        state = copied.state_dict()
        assert all(torch.equal(state[k], v) for k, v in before.items())
        with torch.inference_mode():
            assert torch.equal(copied(x), expected)


def test_inputs_that_require_grad_are_differentiable() -> None:
    quantized = _quantize(_model())
    x = torch.randn(3, 64)
    with torch.no_grad():
        expected = quantized(x)
    x.requires_grad_(True)
    y = quantized(x)
    assert torch.allclose(y, expected, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)


@pytest.mark.parametrize("tokens", [1, 100])
def test_under_torch_compile_a_call_is_one_graph_op(tokens: int) -> None:
    torch._dynamo.reset()
    quantized = _quantize(_model())
    x = torch.randn(tokens, 64)
    with torch.no_grad():
        assert torch._dynamo.explain(quantized)(x).graph_break_count == 0
        compiled = torch.compile(quantized, fullgraph=True, backend="aot_eager")
        assert torch.equal(compiled(x), quantized(x))
    assert quantized[0]._buffers["weight"].is_meta  # the graph's calls release it too


def test_the_disable_variable_turns_the_native_kernels_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(quantcore_native.DISABLE_VARIABLE, "1")
    assert "QUANTCORE_DISABLE_NATIVE is set" in (quantcore_native._check() or "")
    monkeypatch.setenv(quantcore_native.DISABLE_VARIABLE, "0")
    assert quantcore_native._check() is None


def _cpu_has(isa: str) -> bool:
    if isa == "scalar":
        return True
    flags = ("avx2", "fma") if isa == "avx2" else ("avx512f", "avx512bw")
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    return all(f" {flag}" in text for flag in flags)


def test_the_vector_code_is_the_widest_the_cpu_has_or_the_cap() -> None:
    cap = os.environ.get(quantcore_native.MAX_ISA_VARIABLE)
    widest = next(isa for isa in ("avx512", "avx2", "scalar") if _cpu_has(isa))
    expected = cap if cap == "scalar" or (cap == "avx2" and widest == "avx512") else widest
    assert quantcore_native.vector_isa() == expected


def test_an_unknown_cap_is_named_in_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(quantcore_native.MAX_ISA_VARIABLE, "avx1024")
    with caplog.at_level("WARNING", logger="quantcore"):
        assert quantcore_native.unavailable_reason.__wrapped__() is None
    assert "QUANTCORE_NATIVE_MAX_ISA='avx1024' is ignored" in caplog.text
    assert "avx2, scalar" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("cap", ["avx2", "scalar"])
def test_the_narrower_vector_code_passes_the_native_tests(cap: str) -> None:
    """The AVX2 and scalar twins of the vector code (quantization, epilogue, activations, gate
    math) run only where the CPU lacks the wider set; capping the choice runs this file and the
    fusion tests on them, in a process of their own (the choice is made once per process)."""
    if os.environ.get(quantcore_native.MAX_ISA_VARIABLE):
        pytest.skip("already running under a cap")
    if not _cpu_has(cap):
        pytest.skip(f"this CPU has no {cap}")
    here = Path(__file__).parent
    env = os.environ | {quantcore_native.MAX_ISA_VARIABLE: cap}
    files = [str(here / "test_kernels_native.py"), str(here / "test_fusion.py")]
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", *files],
        env=env,
        capture_output=True,
        text=True,
        cwd=here.parent,
    )
    assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-2000:]
    assert " passed" in ran.stdout


# ---------------------------------------------------------------------- the fp16 linear


def _fp16_kernel(
    out_features: int, in_features: int
) -> tuple[fp16_native.NativeFp16Linear, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(in_features)
    weight = (torch.randn(out_features, in_features, generator=generator) * 0.1).half()
    bias = torch.randn(out_features, generator=generator)
    request = KernelRequest(
        "linear", quantcore.plugin.QuantizedWeight("fp16", weight), bias, None, CPU
    )
    assert fp16_native.supports_native_fp16(request)
    return fp16_native.NativeFp16Linear(request), weight, bias


@pytest.mark.parametrize("tokens", [1, 7, 130, 1100])
@pytest.mark.parametrize(("out_features", "in_features"), [(48, 96), (33, 97)])
def test_the_native_fp16_linear_computes_the_float16_weights_product(
    tokens: int, out_features: int, in_features: int
) -> None:
    """Every token count, the fbgemm calls and the many-token widened GEMM alike: the float32
    product of the float16 weight values (summation order aside)."""
    kernel, weight, bias = _fp16_kernel(out_features, in_features)
    x = _inputs(tokens, in_features)
    expected = x.double() @ weight.double().T + bias.double()
    got = kernel(x)
    assert got.shape == (tokens, out_features) and got.dtype == torch.float32
    assert _close(got, expected, rtol=1e-5)
    widens = kernel.widen_above is not None and tokens > 1024  # CPUs without AVX512 only
    assert kernel.serves_many_tokens == widens


@pytest.mark.parametrize("capability", ["AVX2", "AVX512"])
def test_many_fp16_tokens_widen_the_weight_only_without_avx512(
    capability: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    kernel, weight, bias = _fp16_kernel(48, 96)
    x = _inputs(1100, 96)
    assert _close(kernel(x), x.double() @ weight.double().T + bias.double(), rtol=1e-5)
    assert kernel.serves_many_tokens == (capability == "AVX2")


def test_the_native_fp16_weight_comes_back_exactly_and_other_dtypes_run_in_theirs() -> None:
    kernel, weight, bias = _fp16_kernel(48, 96)
    kernel(_inputs(2, 96))
    assert kernel.release_plain_weight() and kernel.plain is None
    assert torch.equal(kernel.plain_weight().data, weight)
    x = _inputs(3, 96).to(torch.bfloat16)
    got = kernel(x)
    assert got.dtype == torch.bfloat16
    expected = x.double() @ weight.double().T + bias.double()
    assert _close(got.double(), expected, rtol=2e-2)


# ------------------------------------------------------------------------------ recurrent


def _recurrent(kind: str, **options: object) -> nn.Module:
    torch.manual_seed(3)
    sizes = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN, "rnn_relu": nn.RNN}
    extra = {"nonlinearity": kind.split("_")[1]} if kind.startswith("rnn") else {}
    return sizes[kind](24, 32, **extra, **options).eval()  # type: ignore[arg-type]


def _python_loop_quantize(
    model: nn.Module, monkeypatch: pytest.MonkeyPatch, dtype: str = "int8"
) -> nn.Module:
    with monkeypatch.context() as patch:
        patch.setattr(kernels_native, "supports_native_recurrent", lambda request: False)
        patch.setattr(fp16_native, "supports_native_recurrent", lambda request: False)
        return _quantize(model, dtype)


RECURRENT_VARIANTS = [
    ("lstm", {}),
    ("lstm", {"num_layers": 2, "bidirectional": True, "batch_first": True}),
    ("lstm", {"proj_size": 12, "num_layers": 2}),
    ("gru", {"num_layers": 2, "bidirectional": True}),
    ("rnn_tanh", {"bias": False}),
    ("rnn_relu", {"num_layers": 2}),
]


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
@pytest.mark.parametrize(("kind", "options"), RECURRENT_VARIANTS)
def test_the_native_sequence_computes_what_the_python_loop_does(
    kind: str, options: dict[str, object], dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _recurrent(kind, **options)
    fused, loop = _quantize(model, dtype), _python_loop_quantize(model, monkeypatch, dtype)
    assert fused.kernel_name.startswith(f"{dtype}-recurrent-native")
    assert "recurrent-native" not in loop.kernel_name
    batch_first = bool(options.get("batch_first"))
    x = torch.randn(4, 9, 24) if batch_first else torch.randn(9, 4, 24)
    lengths = torch.tensor([9, 5, 1, 7])
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first, enforce_sorted=False)
    with torch.inference_mode():
        for inputs in (x, packed, x[0] if not batch_first else x[:, 0]):
            got, want = fused(inputs), loop(inputs)
            for a, b in zip(_flatten(got), _flatten(want), strict=True):
                assert a.shape == b.shape
                assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (kind, options)


def _flatten(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, nn.utils.rnn.PackedSequence):
        return [value.data]
    assert isinstance(value, tuple)
    return [t for item in value for t in _flatten(item)]


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_native_cells_compute_what_the_python_step_does(
    kind: str, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(4)
    cell = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn_tanh": nn.RNNCell}[kind](24, 32).eval()
    fused, loop = _quantize(cell, dtype), _python_loop_quantize(cell, monkeypatch, dtype)
    assert fused.kernel_name.startswith(f"{dtype}-recurrent-native")
    x, h = torch.randn(5, 24), torch.randn(5, 32)
    state = (h, torch.randn(5, 32)) if kind == "lstm" else h
    with torch.inference_mode():
        for args in ((x,), (x, state), (x[0],)):
            for a, b in zip(_flatten(fused(*args)), _flatten(loop(*args)), strict=True):
                assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("lstm", {"num_layers": 2, "bidirectional": True, "batch_first": True}),
        ("lstm", {"proj_size": 12}),
        ("gru", {}),
    ],
)
def test_under_torch_compile_a_sequence_is_one_graph_op(
    kind: str, options: dict[str, object], dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compiled recurrent layer keeps the native sequence (one op, no graph break), not the
    Python loop, and lets its pieces drop their plain weights as in eager mode."""
    torch._dynamo.reset()
    model = _recurrent(kind, **options)
    fused = _quantize(model, dtype)
    x = torch.randn(4, 9, 24) if options.get("batch_first") else torch.randn(9, 4, 24)
    with torch.inference_mode():
        expected = fused(x)

    def no_loop(*args: object) -> None:
        raise AssertionError("the Python loop ran under torch.compile")

    monkeypatch.setattr(type(fused), "_loop", no_loop)
    with torch.no_grad():
        assert torch._dynamo.explain(_quantize(model, dtype))(x).graph_break_count == 0
        fused = _quantize(model, dtype)  # a fresh layer: its first call is the compiled one
        compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
        got = compiled(x)
    for a, b in zip(_flatten(got), _flatten(expected), strict=True):
        assert torch.equal(a, b)
    assert all(piece._buffers["weight"].is_meta for piece in fused.linears.values())


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_under_torch_compile_a_cell_step_is_one_graph_op(kind: str) -> None:
    torch._dynamo.reset()
    torch.manual_seed(4)
    cell = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}[kind](24, 32).eval()
    quantized = _quantize(cell, "int8")
    x, h = torch.randn(5, 24), torch.randn(5, 32)
    state = (h, torch.randn(5, 32)) if kind == "lstm" else h
    with torch.no_grad():
        expected = quantized(x, state)
        assert torch._dynamo.explain(quantized)(x, state).graph_break_count == 0
        got = torch.compile(quantized, fullgraph=True, backend="aot_eager")(x, state)
    for a, b in zip(_flatten(got), _flatten(expected), strict=True):
        assert torch.equal(a, b)


def test_the_python_loop_serves_what_the_native_sequence_cannot() -> None:
    """Autograd and dropout in training take the loop (the native op has neither)."""
    model = _recurrent("lstm", num_layers=2, dropout=0.5)
    fused = _quantize(model)
    x = torch.randn(6, 2, 24, requires_grad=True)
    out, _ = fused(x)
    out.sum().backward()
    assert x.grad is not None
    fused.train()
    torch.manual_seed(0)
    a, _ = fused(x.detach())
    torch.manual_seed(1)
    b, _ = fused(x.detach())
    assert not torch.equal(a, b)  # dropout between the layers ran


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_the_sequence_releases_its_pieces_plain_weights_and_survives_copies(dtype: str) -> None:
    model = _recurrent("gru", num_layers=2)
    fused = _quantize(model, dtype)
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    x = torch.randn(7, 3, 24)
    with torch.inference_mode():
        expected, _ = fused(x)
    assert all(piece._buffers["weight"].is_meta for piece in fused.linears.values())
    copied = pickle.loads(pickle.dumps(fused))
    assert copied.kernel_name == fused.kernel_name
    assert all(torch.equal(copied.state_dict()[k], v) for k, v in before.items())
    with torch.inference_mode():
        assert torch.equal(copied(x)[0], expected)


# ------------------------------------------------------------------------------ embeddings


def _table_request(fmt: str, op: str, **options: object) -> KernelRequest:
    torch.manual_seed(7)
    table = torch.randn(40, 12)
    registry = quantcore.create_plugin_manager().registry()
    scheme = registry.scheme(fmt)
    spec = scheme.layer_specs[op].weight
    observer = registry.observer(spec.observer) if spec.observer else None
    weight = scheme.quantize_weight(table, spec, observer)
    options.setdefault("dtype", torch.float32)
    return KernelRequest(op, weight, None, None, CPU, options)


def _reference_kernel(request: KernelRequest) -> object:
    registry = quantcore.create_plugin_manager().registry()
    (reference,) = (
        b
        for b in registry.kernel_backends
        if b.reference and b.op == request.op and b.weight_format == request.weight.format
    )
    return reference.prepare(request)


@pytest.mark.parametrize("fmt", ["int8", "fp16"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"max_norm": 1.0},
        {"max_norm": 2.0, "norm_type": 1.0},
        {"max_norm": 0.5, "norm_type": float("inf")},
    ],
)
def test_native_embedding_lookups_are_the_reference_rows(
    fmt: str, options: dict[str, object]
) -> None:
    request = _table_request(fmt, "embedding", **options)
    kernel = (kernels_native if fmt == "int8" else fp16_native).prepare_native_embedding(request)
    index = torch.tensor([[0, 39, 5], [5, 5, 1]])
    got, want = kernel(index), _reference_kernel(request)(index)  # type: ignore[operator]
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)
    if "max_norm" in options:  # rows were renormalized: not the plain rows
        assert not torch.allclose(got, _reference_kernel(_table_request(fmt, "embedding"))(index))
    with pytest.raises(IndexError, match="out of range"):
        kernel(torch.tensor([40]))


@pytest.mark.parametrize("fmt", ["int8", "fp16"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"padding_idx": 2},
        {"include_last_offset": True},
        {"dtype": torch.bfloat16},
        {"max_norm": 1.0},
    ],
)
def test_native_embedding_bags_compute_the_reference(
    fmt: str, mode: str, options: dict[str, object]
) -> None:
    request = _table_request(fmt, "embedding_bag", mode=mode, **options)
    module = kernels_native if fmt == "int8" else fp16_native
    # FP16 layers of another dtype reduce in that dtype, as the reference does: not native
    assert module.supports_native_table(request) == (fmt == "int8" or "dtype" not in options)
    kernel = module.prepare_native_embedding_bag(request)
    reference = _reference_kernel(request)
    indices = torch.tensor([1, 2, 4, 5, 4, 3, 2, 9, 2, 2, 7])
    last = options.get("include_last_offset")
    offsets = torch.tensor([0, 3, 3, 8, 11] if last else [0, 3, 3, 8])  # an empty bag too
    calls: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = [
        (indices, offsets, None),
        (indices.reshape(1, -1)[:, :10].reshape(2, 5), None, None),
    ]
    if mode == "sum":
        calls.append((indices, offsets, torch.rand(indices.shape)))
    for args in calls:
        got, want = kernel(*args), reference(*args)  # type: ignore[operator]
        assert got.dtype == want.dtype == options.get("dtype", torch.float32)
        if module.supports_native_table(request):
            assert torch.allclose(got.float(), want.float(), rtol=1e-6, atol=1e-6), args


@pytest.mark.parametrize("fmt", ["int8", "fp16"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_native_bags_with_a_last_offset_serve_every_call_torch_computes_plainly(
    fmt: str, mode: str
) -> None:
    """include_last_offset runs natively when the offsets end at the input's end; when they
    end short of it, torch's mean and max compute the last bag oddly, and those calls give
    torch's result through the reference."""
    request = _table_request(fmt, "embedding_bag", mode=mode, include_last_offset=True)
    module = kernels_native if fmt == "int8" else fp16_native
    kernel = module.prepare_native_embedding_bag(request)
    reference = _reference_kernel(request)
    indices = torch.tensor([1, 2, 4, 5, 4, 3, 2, 9, 2, 2, 7])
    ending, short = torch.tensor([0, 3, 3, 8, 11]), torch.tensor([0, 3, 8, 9])
    reference_calls: list[torch.Tensor] = []

    def counted(*args: torch.Tensor | None) -> torch.Tensor:
        reference_calls.append(args[1])  # type: ignore[arg-type]
        return reference(*args)  # type: ignore[operator, no-any-return]

    kernel.reference = counted  # type: ignore[union-attr]
    for offsets in (ending, short):
        got, want = kernel(indices, offsets), reference(indices, offsets, None)  # type: ignore[operator]
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-6), offsets
    assert [o.tolist() for o in reference_calls] == ([] if mode == "sum" else [short.tolist()])


def test_native_lookups_trace_as_the_reference_under_torch_compile() -> None:
    torch._dynamo.reset()
    torch.manual_seed(8)
    model = nn.ModuleDict({"table": nn.Embedding(40, 12), "bag": nn.EmbeddingBag(40, 12)})

    class Lookups(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, index: torch.Tensor) -> torch.Tensor:
            return self.inner["table"](index).sum(1) + self.inner["bag"](index)

    quantized = _quantize(Lookups())
    assert quantized.inner["table"].kernel_name == "int8-embedding-native"
    index = torch.tensor([[1, 2, 3], [4, 5, 39]])
    with torch.no_grad():
        assert torch._dynamo.explain(quantized)(index).graph_break_count == 0
        compiled = torch.compile(quantized, fullgraph=True, backend="aot_eager")
        assert torch.allclose(compiled(index), quantized(index), rtol=1e-6, atol=1e-6)
