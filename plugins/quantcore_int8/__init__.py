"""The built-in INT8 dynamic quantization scheme: int8 weights quantized ahead of time, inputs
quantized on the fly at every call."""

from __future__ import annotations

from collections.abc import Iterator

import quantcore
from quantcore import ActivationSpec, Granularity, LayerSpec, WeightSpec
from quantcore_int8 import kernels_cpu
from quantcore_int8.kernels import prepare_reference_linear
from quantcore_int8.quantization import FORMAT, dequantize_weight, quantize_weight

LAYER_SPECS = {
    "linear": LayerSpec(
        weight=WeightSpec(Granularity.PER_CHANNEL, symmetric=True, observer="minmax", axis=0),
        activation=ActivationSpec(Granularity.PER_TOKEN, symmetric=True),
        reason=(
            "per-output-channel symmetric weights keep outlier channels from crushing the rest and "
            "need no zero-point correction in the matmul; per-token activations follow each "
            "token's own range (torch.ao's per-tensor 7-bit activations lose ~5% cosine on "
            "sentence embeddings)"
        ),
    ),
}


@quantcore.hookimpl
def quantcore_schemes() -> Iterator[quantcore.Scheme]:
    yield quantcore.Scheme(
        name="int8",
        weight_format=FORMAT,
        layer_specs=LAYER_SPECS,
        quantize_weight=quantize_weight,
        dequantize_weight=dequantize_weight,
        description="INT8 dynamic: int8 weights, activations quantized per call",
        aliases=("qint8", "dynamic_int8"),
    )


@quantcore.hookimpl
def quantcore_kernel_backends() -> Iterator[quantcore.KernelBackend]:
    yield quantcore.KernelBackend(
        name="int8-linear-reference",
        op="linear",
        weight_format=FORMAT,
        prepare=prepare_reference_linear,
        reference=True,
        description="dequantize weights, fake-quantize inputs, float matmul (correctness oracle)",
    )
    # Fast CPU kernels, most preferred first; each computes exactly what the reference does.
    yield quantcore.KernelBackend(
        name="int8-linear-fbgemm+onednn",
        op="linear",
        weight_format=FORMAT,
        prepare=kernels_cpu.prepare_fbgemm_onednn_linear,
        is_available=kernels_cpu.fbgemm_and_onednn_available,
        supports=kernels_cpu.supports_fbgemm_onednn,
        priority=30,
        description=(
            f"CPU: fbgemm int8 GEMM (deprecated op, warnings hidden) for calls of up to "
            f"{kernels_cpu.FBGEMM_MAX_TOKENS} tokens, oneDNN int8 GEMM above"
        ),
    )
    yield quantcore.KernelBackend(
        name="int8-linear-onednn",
        op="linear",
        weight_format=FORMAT,
        prepare=kernels_cpu.prepare_onednn_linear,
        is_available=kernels_cpu.onednn_available,
        supports=kernels_cpu.supports_onednn,
        priority=20,
        description="CPU: oneDNN int8 GEMM (torch.ops.onednn.qlinear_pointwise), per-token scales",
    )
    yield quantcore.KernelBackend(
        name="int8-linear-fbgemm",
        op="linear",
        weight_format=FORMAT,
        prepare=kernels_cpu.prepare_fbgemm_linear,
        is_available=kernels_cpu.fbgemm_available,
        supports=kernels_cpu.supports_fbgemm,
        priority=10,
        description="CPU: fbgemm int8 GEMM (deprecated op, warnings hidden), per-token scales",
    )
