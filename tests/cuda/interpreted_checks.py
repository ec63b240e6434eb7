"""Checks of the Triton kernels' math, run by test_triton_interpreter.py in a subprocess with
TRITON_INTERPRET=1 (triton reads it when kernels are defined, so it must be set before they are
imported, and setting it in the test process would leak into every other test).

Usage: TRITON_INTERPRET=1 python tests/cuda/interpreted_checks.py CASE
Each case asserts, then prints one JSON line of what it measured for the parent test to check.

Known interpreter limits (not kernel bugs; benchmarks/gpu.py covers them on hardware): bfloat16
tl.dot and int8 -> bfloat16 casts are wrong in the interpreter, and float32 -> bfloat16 stores
truncate instead of rounding, so bfloat16 outputs are compared within one bfloat16 step.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

import torch
from quantcore_int8 import kernels_cuda
from quantcore_int8 import triton_kernels as tk
from quantcore_int8.kernels import prepare_reference_linear
from quantcore_int8.quantization import dequantize_weight, quantize_activation

from quantcore.plugin import ActivationSpec, Granularity, KernelRequest, QuantizedWeight, WeightSpec

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

# 8 bits spelled out: on a CPU without VNNI the reference would otherwise use 7 (CUDA uses 8).
PER_TOKEN = ActivationSpec(Granularity.PER_TOKEN, symmetric=True, bits=8)
ASYMMETRIC = ActivationSpec(Granularity.PER_TOKEN, symmetric=False, bits=8)
SPECS = {True: PER_TOKEN, False: ASYMMETRIC}
WEIGHT_SPEC = WeightSpec(Granularity.PER_CHANNEL, symmetric=True, observer="minmax", axis=0)


def _weight(n: int, k: int, gen: torch.Generator) -> QuantizedWeight:
    data = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen)
    scale = torch.rand(n, generator=gen) * 0.02 + 1e-3
    return QuantizedWeight("int8", data, scale=scale, spec=WEIGHT_SPEC)


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().float(), ref.detach().float()
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def _check_rows(x: torch.Tensor, symmetric: bool) -> None:
    values, scale, zero_point = tk.quantize_rows(x, symmetric)
    q_ref, scale_ref, zero_ref = quantize_activation(x, SPECS[symmetric])
    assert torch.equal(scale, scale_ref.reshape(-1)), (x.dtype, x.shape, symmetric)
    assert torch.equal(values, q_ref), (x.dtype, x.shape, (values.int() - q_ref.int()).abs().max())
    if symmetric:
        assert zero_point is None and zero_ref is None
    else:
        assert zero_point is not None and zero_ref is not None
        assert zero_point.dtype == torch.int32
        assert torch.equal(zero_point, zero_ref.reshape(-1).to(torch.int32)), x.shape


def case_quantize_rows() -> dict[str, object]:
    """Bit-exact against quantize_activation, symmetric and asymmetric: values, scales, zero
    points, ties to even, zero rows, one-signed rows, long rows, strided rows."""
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for symmetric in (True, False):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for m, k in ((1, 8), (7, 200), (3, 4096), (2, 5000)):
                x = (torch.randn(m, k, generator=gen) * 3).to(dtype)
                x[0, :3] = 0  # a few zeros
                if m > 2:
                    x[1] = 0  # an all-zero row: the smallest normal scale, all-zero values
                if m > 3:
                    x[2] = x[2].abs() + 0.5  # all positive: zero point at qmin
                    x[3] = -x[3].abs()  # all negative: zero point at qmax
                _check_rows(x, symmetric)
                checked += 1
        # a strided input (a column slice of a wider tensor): rows are read with their own stride
        wide = torch.randn(5, 64, generator=gen)
        _check_rows(wide[:, :40], symmetric)
        checked += 1
    # ties: row maximum 127 gives scale 1, so x.5 values must round to even as torch.round does
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5]])
    values, scale, _ = tk.quantize_rows(x)
    assert float(scale) == 1.0
    assert values.tolist() == [[127, 0, 2, 2, 0, -2, -2, 126]], values.tolist()
    # asymmetric ties: range [-127.5, 127.5] gives scale 1 and zero point 0 (-128 - round(-127.5))
    x = torch.tensor([[-127.5, 127.5, 0.5, 1.5, -2.5, 3.0]])
    values, scale, zero_point = tk.quantize_rows(x, symmetric=False)
    assert float(scale) == 1.0 and zero_point is not None and int(zero_point) == 0
    assert values.tolist() == [[-128, 127, 0, 2, -2, 3]], values.tolist()
    _check_rows(x, symmetric=False)
    return {"checked": checked + 2}


def _quantized_reference(
    x: torch.Tensor, weight: QuantizedWeight, bias: torch.Tensor | None, symmetric: bool = True
) -> torch.Tensor:
    request = KernelRequest("linear", weight, bias, SPECS[symmetric], torch.device("cpu"))
    return prepare_reference_linear(request)(x)


def case_int8_gemm() -> dict[str, object]:
    """Every autotuning config of the int8 GEMM (ragged M, N, K; with and without bias; with and
    without zero points) against the reference kernel (fake-quantized input times dequantized
    weight)."""
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    checked = 0
    for config in tk.LARGE_CONFIGS:
        for m, n, k, with_bias in ((40, 72, 200, True), (17, 24, 64, False), (130, 136, 264, True)):
            for symmetric in (True, False):
                w = _weight(n, k, gen)
                bias = torch.randn(n, generator=gen) if with_bias else None
                x = torch.randn(m, k, generator=gen) + (0.0 if symmetric else 0.7)
                assert w.scale is not None
                out = tk.int8_linear_quantized(
                    x, w.data, w.scale, bias, config=config, symmetric=symmetric
                )
                worst = max(worst, _rel(out, _quantized_reference(x, w, bias, symmetric)))
                checked += 1
    assert worst < 1e-5, worst
    return {"checked": checked, "max_rel_error": worst}


def case_weight_only() -> dict[str, object]:
    """Every config of the few-token path against x @ dequantized(W).T + b (fp32 and fp16)."""
    gen = torch.Generator().manual_seed(2)
    worst = {"float32": 0.0, "float16": 0.0}
    checked = 0
    for config in tk.SMALL_CONFIGS:
        for dtype in (torch.float32, torch.float16):
            for m, n, k in ((1, 72, 200), (5, 40, 96), (16, 64, 300)):
                w = _weight(n, k, gen)
                bias = torch.randn(n, generator=gen)
                x = torch.randn(m, k, generator=gen).to(dtype)
                assert w.scale is not None
                out = tk.int8_linear_weight_only(x, w.data, w.scale, bias, config=config)
                assert out.dtype == dtype
                ref = x.float() @ dequantize_weight(w).t() + bias
                name = str(dtype).removeprefix("torch.")
                worst[name] = max(worst[name], _rel(out, ref))
                checked += 1
    assert worst["float32"] < 1e-5 and worst["float16"] < 2e-3, worst
    return {"checked": checked, "max_rel_error": worst}


def _prepared(
    prepare: Callable[[KernelRequest], Callable[[torch.Tensor], torch.Tensor]],
    activation: ActivationSpec = PER_TOKEN,
) -> dict[str, object]:
    gen = torch.Generator().manual_seed(3)
    w = _weight(48, 64, gen)
    bias = torch.randn(48, generator=gen)
    request = KernelRequest("linear", w, bias, activation, torch.device("cpu"))
    run = prepare(request)
    reference = prepare_reference_linear(request)
    errors = {}
    for shape in ((2, 3, 64), (1, 64), (4, 16, 64), (64,)):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            x = torch.randn(*shape, generator=gen).to(dtype)
            out = run(x)
            assert out.shape == (*shape[:-1], 48) and out.dtype == dtype, (shape, out.shape)
            rows = x.numel() // 64
            if rows <= tk.SMALL_M:
                # few tokens: the float input is used as is (weight-only int8)
                ref = (x.float() @ dequantize_weight(w).t() + bias).to(dtype)
            else:
                ref = reference(x)
            if dtype == torch.bfloat16 and rows <= tk.SMALL_M:
                continue  # bfloat16 tl.dot is wrong in the interpreter (see module docstring)
            tolerance = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
            err = _rel(out, ref)
            assert err < tolerance, (shape, dtype, err)
            errors[f"{shape}/{dtype}"] = err
    # an input that requires grad (a forward outside no_grad) still takes the fast kernel
    calls = []
    quantize_rows = tk.quantize_rows

    def counting(x: torch.Tensor, symmetric: bool = True) -> tk.RowQuantized:
        calls.append(x.shape)
        assert symmetric == activation.symmetric
        return quantize_rows(x, symmetric)

    tk.quantize_rows = counting
    try:
        x = torch.randn(20, 64, generator=gen, requires_grad=True)
        out = run(x)
    finally:
        tk.quantize_rows = quantize_rows
    assert calls == [(20, 64)] and _rel(out, reference(x)) < 1e-5, calls
    # other input dtypes go to the reference kernel
    x64 = torch.randn(20, 64, generator=gen, dtype=torch.float64)
    assert torch.equal(run(x64), reference(x64))
    return {"checked": len(errors) + 2, "max_rel_error": max(errors.values())}


def case_prepared_triton() -> dict[str, object]:
    """The backend's prepared kernel as a layer sees it: N-D inputs, all dtypes, both paths."""
    return _prepared(kernels_cuda.prepare_triton_linear)


def case_prepared_int_mm() -> dict[str, object]:
    """The torch._int_mm variant (the CPU build has _int_mm) with the Triton rescale kernel."""
    return _prepared(lambda r: kernels_cuda.prepare_triton_linear(r, gemm="int_mm"))


def case_prepared_triton_asymmetric() -> dict[str, object]:
    """The int8 default for linear layers: per-token activations with zero points."""
    return _prepared(kernels_cuda.prepare_triton_linear, ASYMMETRIC)


def case_prepared_int_mm_asymmetric() -> dict[str, object]:
    return _prepared(lambda r: kernels_cuda.prepare_triton_linear(r, gemm="int_mm"), ASYMMETRIC)


CASES = {
    name.removeprefix("case_"): fn
    for name, fn in dict(globals()).items()
    if name.startswith("case_")
}

if __name__ == "__main__":
    print(json.dumps(CASES[sys.argv[1]]()))
