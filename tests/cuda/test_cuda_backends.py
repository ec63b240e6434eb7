"""The CUDA kernel backends on machines without a GPU: they import, say they are unavailable,
never get picked for CPU layers, and their selection logic and torch-only math are checked here;
tests that need a real GPU are skipped (benchmarks/gpu.py covers speed on hardware)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from quantcore_fp16 import kernels_cuda as fp16_cuda
from quantcore_int8 import kernels_cuda as int8_cuda
from quantcore_int8.kernels import prepare_reference_linear
from quantcore_int8.quantization import quantize_weight
from torch import nn

import quantcore
from quantcore.plugin import (
    ActivationSpec,
    Granularity,
    KernelBackend,
    KernelRequest,
    QuantizedWeight,
    WeightSpec,
    select_kernel,
)

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
PER_TOKEN = ActivationSpec(Granularity.PER_TOKEN, symmetric=True, bits=8)  # the CUDA width
INT8_SPEC = WeightSpec(Granularity.PER_CHANNEL, symmetric=True, observer="minmax", axis=0)
CUDA_BACKENDS = {"int8-linear-cuda-triton", "int8-linear-cuda-eager", "fp16-linear-cuda"}
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks behaviour without a GPU")


def _int8_weight(n: int = 32, k: int = 64, seed: int = 0) -> QuantizedWeight:
    gen = torch.Generator().manual_seed(seed)
    data = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen)
    return QuantizedWeight("int8", data, scale=torch.rand(n, generator=gen) + 0.01, spec=INT8_SPEC)


def _request(
    weight: QuantizedWeight, device: torch.device, activation: ActivationSpec | None = PER_TOKEN
) -> KernelRequest:
    return KernelRequest("linear", weight, None, activation, device)


def _backends(
    plugin_manager: quantcore.QuantcorePluginManager, fmt: str
) -> tuple[KernelBackend, ...]:
    return plugin_manager.registry().kernel_candidates("linear", fmt)


def test_cuda_backends_are_registered_and_preferred_over_the_reference(
    plugin_manager: quantcore.QuantcorePluginManager,
) -> None:
    int8 = [b.name for b in _backends(plugin_manager, "int8")]
    fp16 = [b.name for b in _backends(plugin_manager, "fp16")]
    assert int8.index("int8-linear-cuda-triton") < int8.index("int8-linear-cuda-eager")
    assert int8[-1] == "int8-linear-reference"
    assert fp16.index("fp16-linear-cuda") < fp16.index("fp16-linear-reference")


@no_gpu
def test_cuda_backends_report_unavailable_without_a_gpu(
    plugin_manager: quantcore.QuantcorePluginManager,
) -> None:
    backends = [*_backends(plugin_manager, "int8"), *_backends(plugin_manager, "fp16")]
    found = {b.name: b.is_available() for b in backends if b.name in CUDA_BACKENDS}
    assert found == dict.fromkeys(CUDA_BACKENDS, False)


def test_cuda_backends_never_support_a_cpu_request() -> None:
    weight = _int8_weight()
    assert not int8_cuda.supports_cuda_linear(_request(weight, CPU))
    assert not int8_cuda.supports_int_mm(_request(weight, CPU))
    fp16_weight = QuantizedWeight("fp16", torch.randn(8, 16).half())
    assert not fp16_cuda.supports_cuda_linear(_request(fp16_weight, CPU, activation=None))


@no_gpu
def test_supports_answers_for_a_cuda_request_without_a_gpu() -> None:
    """Device selection logic runs on any machine: supports() reads shapes and specs only."""
    weight = _int8_weight(32, 64)
    assert int8_cuda.supports_cuda_linear(_request(weight, CUDA))
    assert int8_cuda.supports_int_mm(_request(weight, CUDA))
    fp16_weight = QuantizedWeight("fp16", torch.randn(8, 16).half())
    assert fp16_cuda.supports_cuda_linear(_request(fp16_weight, CUDA, activation=None))
    # what the kernels do not serve
    ragged = _int8_weight(30, 60)
    assert int8_cuda.supports_cuda_linear(_request(ragged, CUDA))  # Triton masks ragged tiles
    assert not int8_cuda.supports_int_mm(_request(ragged, CUDA))  # _int_mm needs multiples of 8
    per_tensor = ActivationSpec(Granularity.PER_TENSOR, symmetric=True)
    assert not int8_cuda.supports_cuda_linear(_request(weight, CUDA, activation=per_tensor))
    seven_bits = ActivationSpec(Granularity.PER_TOKEN, symmetric=False, bits=7)
    assert not int8_cuda.supports_cuda_linear(_request(weight, CUDA, activation=seven_bits))
    assert not int8_cuda.supports_cuda_linear(_request(weight, CUDA, activation=None))
    with_zero_point = dataclasses.replace(weight, zero_point=torch.zeros(32, dtype=torch.int32))
    assert not int8_cuda.supports_cuda_linear(_request(with_zero_point, CUDA))
    too_long = QuantizedWeight(
        "int8",
        torch.zeros(8, int8_cuda.MAX_K + 8, dtype=torch.int8),
        scale=torch.ones(8),
        spec=INT8_SPEC,
    )
    assert not int8_cuda.supports_cuda_linear(_request(too_long, CUDA))


def _pick(backends: tuple[KernelBackend, ...], request: KernelRequest) -> str:
    """select_kernel's choice, with prepare() stubbed (preparing a CUDA kernel needs a GPU)."""
    stubbed = tuple(dataclasses.replace(b, prepare=prepare_reference_linear) for b in backends)
    return select_kernel(stubbed, request)[0].name


@no_gpu
def test_device_selection_simulated(
    plugin_manager: quantcore.QuantcorePluginManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With CUDA reported present: Triton for CUDA layers, the eager _int_mm path without
    triton (or the reference where _int_mm cannot run), never a CUDA backend for CPU layers."""
    backends = _backends(plugin_manager, "int8")
    weight = _int8_weight(32, 64)
    assert _pick(backends, _request(weight, CUDA)) == "int8-linear-reference"  # no GPU here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(int8_cuda, "triton_installed", lambda: True)
    assert _pick(backends, _request(weight, CUDA)) == "int8-linear-cuda-triton"
    assert _pick(backends, _request(weight, CPU)) != "int8-linear-cuda-triton"
    assert "cuda" not in _pick(backends, _request(weight, CPU))
    monkeypatch.setattr(int8_cuda, "triton_installed", lambda: False)
    assert _pick(backends, _request(weight, CUDA)) == "int8-linear-cuda-eager"
    assert _pick(backends, _request(_int8_weight(30, 60), CUDA)) == "int8-linear-reference"
    # GPUs older than Ampere have no int8 tensor-core path in these kernels
    monkeypatch.setattr(int8_cuda, "triton_installed", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert _pick(backends, _request(weight, CUDA)) == "int8-linear-reference"
    fp16_weight = QuantizedWeight("fp16", torch.randn(8, 16).half())
    fp16 = _backends(plugin_manager, "fp16")
    assert _pick(fp16, _request(fp16_weight, CUDA, activation=None)) == "fp16-linear-cuda"
    assert _pick(fp16, _request(fp16_weight, CPU, activation=None)) != "fp16-linear-cuda"


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_quantizing_on_cpu_picks_no_cuda_backend(
    plugin_manager: quantcore.QuantcorePluginManager, dtype: str
) -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    result = quantcore.quantize(model, dtype=dtype, plugin_manager=plugin_manager)
    assert result.module is not None
    kernels = {getattr(m, "kernel_name", None) for m in result.module.modules()} - {None}
    assert kernels and not kernels & CUDA_BACKENDS
    assert result.module(torch.randn(3, 64)).shape == (3, 16)


@pytest.mark.parametrize("symmetric", [True, False])
def test_eager_int_mm_path_matches_the_reference(symmetric: bool) -> None:
    """The no-triton CUDA fallback's math, run on CPU (torch._int_mm has a CPU kernel): per-token
    quantization, int32 matmul, rescale (and the zero-point correction for asymmetric
    activations); few rows are padded to what _int_mm accepts on CUDA."""
    torch.manual_seed(0)
    model = nn.Linear(64, 48)
    weight = quantize_weight(model.weight.detach(), INT8_SPEC, _minmax())
    activation = ActivationSpec(Granularity.PER_TOKEN, symmetric=symmetric, bits=8)
    request = KernelRequest("linear", weight, model.bias.detach(), activation, CPU)
    eager = int8_cuda.prepare_eager_linear(request)
    reference = prepare_reference_linear(request)
    for shape in ((1, 64), (5, 64), (2, 17, 64), (64,)):
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(*shape).to(dtype)
            out = eager(x)
            ref = reference(x)
            assert out.shape == ref.shape and out.dtype == dtype
            tolerance = 1e-5 if dtype == torch.float32 else 1e-2
            err = (out.float() - ref.float()).abs().max() / ref.float().abs().max()
            assert err < tolerance, (shape, dtype, err)
    x64 = torch.randn(3, 64, dtype=torch.float64)
    assert torch.equal(eager(x64), reference(x64))  # dtypes the kernels skip: the reference


def _minmax() -> quantcore.plugin.Observer:
    return quantcore.create_plugin_manager().registry().observer("minmax")


def test_fp16_cuda_kernel_computes_like_a_half_model() -> None:
    """Same math as ``.half()`` (on CPU here): input cast to float16, float16 weights used as
    they are (no float32 copy), output back in the input's dtype."""
    torch.manual_seed(0)
    model = nn.Linear(32, 16)
    half = nn.Linear(32, 16).half()
    half.load_state_dict(model.state_dict())
    weight = QuantizedWeight("fp16", model.weight.detach().half())
    request = KernelRequest("linear", weight, model.bias.detach(), None, CPU)
    run = fp16_cuda.prepare_cuda_linear(request)
    x = torch.randn(4, 32)
    out = run(x)
    assert out.dtype == torch.float32
    assert torch.equal(out, half(x.half()).float())
    x16 = x.half()
    assert torch.equal(run(x16), half(x16))


def test_importing_the_cuda_modules_does_not_import_triton() -> None:
    import subprocess
    import sys

    # torch's compiler stack (torch._dynamo, loaded by torch.compiler.disable) imports triton
    # when it is installed: compare with what torch pulls in by itself.
    code = (
        "import sys, torch, torch._dynamo; by_torch = 'triton' in sys.modules;"
        "import quantcore_int8.kernels_cuda, quantcore_fp16.kernels_cuda, quantcore;"
        "quantcore.create_plugin_manager().registry();"
        "print('triton' in sys.modules and not by_torch,"
        " 'quantcore_int8.triton_kernels' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_cuda_model_quantizes_on_the_gpu_and_follows_to(dtype: str) -> None:
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256)).cuda()
    result = quantcore.quantize(model, dtype=dtype)
    assert result.module is not None
    q = result.module
    assert {t.device.type for t in [*q.parameters(), *q.buffers()]} == {"cuda"}
    assert {m.kernel_name for m in q.modules() if hasattr(m, "kernel_name")} <= CUDA_BACKENDS
    x = torch.randn(64, 256, device="cuda")
    ref = model(x)
    assert (q(x) - ref).abs().max() / ref.abs().max() < 0.05
    q.to("cpu")
    assert {
        m.kernel_name for m in q.modules() if hasattr(m, "kernel_name")
    } & CUDA_BACKENDS == set()
    assert q(x.cpu()).device.type == "cpu"


def test_asymmetric_activations_take_the_fused_triton_path() -> None:
    """The int8 default for linear layers is per-token asymmetric: the Triton kernel takes it
    (zero-point term in its epilogue), as does the eager _int_mm path; the int32 bound on K is
    halved, since q - zero_point spans 255 values."""
    torch.manual_seed(0)
    weight = quantize_weight(torch.randn(64, 64), INT8_SPEC, _minmax())
    asymmetric = ActivationSpec(Granularity.PER_TOKEN, symmetric=False)
    request = KernelRequest("linear", weight, None, asymmetric, CUDA)
    assert int8_cuda.supports_cuda_linear(request)
    assert int8_cuda.supports_int_mm(request)
    seven_bits = ActivationSpec(Granularity.PER_TOKEN, symmetric=False, bits=7)
    assert not int8_cuda.supports_int_mm(KernelRequest("linear", weight, None, seven_bits, CUDA))
    k = int8_cuda.MAX_K_ASYMMETRIC + 8
    long_rows = QuantizedWeight(
        "int8", torch.zeros(8, k, dtype=torch.int8), scale=torch.ones(8), spec=INT8_SPEC
    )
    assert int8_cuda.supports_cuda_linear(_request(long_rows, CUDA))  # symmetric: fits
    assert not int8_cuda.supports_cuda_linear(_request(long_rows, CUDA, activation=asymmetric))
