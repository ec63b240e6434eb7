"""The built-in INT8 dynamic quantization scheme: int8 weights quantized ahead of time, inputs
quantized on the fly at every call."""

from __future__ import annotations

from collections.abc import Iterator

import quantcore_native
import torch

from quantcore import plugin
from quantcore.plugin import ActivationSpec, Granularity, LayerSpec, WeightSpec
from quantcore_int8 import cpu_gemms, kernels_cpu, kernels_cuda, kernels_native
from quantcore_int8.kernels import prepare_reference_linear
from quantcore_int8.kernels_conv import prepare_reference_conv, supports_conv
from quantcore_int8.kernels_embedding import (
    prepare_reference_embedding,
    prepare_reference_embedding_bag,
    supports_rows,
)
from quantcore_int8.quantization import FORMAT, dequantize_weight, quantize_weight

# Defaults for the layer kinds beyond linear, chosen from the measurements in docs/schemes.md
# (benchmarks/measure_layer_specs.py reproduces them).
LAYER_KIND_SPECS = {
    "attention": LayerSpec(
        weight=WeightSpec(Granularity.PER_CHANNEL, symmetric=True, observer="minmax", axis=0),
        activation=ActivationSpec(Granularity.PER_TOKEN, symmetric=False),
        reason=(
            "the q/k/v and output projections are linear layers: per-row symmetric weights, "
            "per-token asymmetric activations, as for linear"
        ),
    ),
    "recurrent": LayerSpec(
        weight=WeightSpec(Granularity.PER_CHANNEL, symmetric=True, observer="minmax", axis=0),
        activation=ActivationSpec(Granularity.PER_TOKEN, symmetric=True),
        reason=(
            "per-gate-row symmetric weights; inputs and hidden states quantized per batch row at "
            "every step (tanh-bounded states are centred, asymmetric gained nothing measurable)"
        ),
    ),
    "embedding": LayerSpec(
        weight=WeightSpec(Granularity.PER_CHANNEL, symmetric=False, observer="minmax", axis=0),
        activation=None,
        reason=(
            "weight-only, per-row asymmetric: a lookup has no activation to quantize and rows "
            "differ in offset as well as range"
        ),
    ),
    "embedding_bag": LayerSpec(
        weight=WeightSpec(Granularity.PER_CHANNEL, symmetric=False, observer="minmax", axis=0),
        activation=None,
        reason="weight-only, per-row asymmetric, as for embedding",
    ),
    "conv": LayerSpec(
        weight=WeightSpec(Granularity.PER_CHANNEL, symmetric=True, observer="minmax", axis=0),
        activation=ActivationSpec(Granularity.PER_TOKEN, symmetric=False),
        reason=(
            "per-output-channel symmetric weights; inputs quantized per sample (one scale per "
            "batch element), asymmetric because conv inputs are mostly post-ReLU (non-negative)"
        ),
        keep_reason=(
            "quantized convolutions cost more accuracy than float ones, which torch.ao keeps "
            "(model output error MobileNet-v2 0.40 vs 0.009, ResNet-18 0.076 vs 0.009; "
            "docs/schemes.md), and run slower than float (no int8 conv kernel)"
        ),
    ),
}

LAYER_SPECS = {
    "linear": LayerSpec(
        weight=WeightSpec(Granularity.PER_CHANNEL, symmetric=True, observer="minmax", axis=0),
        activation=ActivationSpec(Granularity.PER_TOKEN, symmetric=False),
        reason=(
            "per-output-channel symmetric weights keep outlier channels from crushing the rest; "
            "per-token activations follow each token's own range (torch.ao's per-tensor 7-bit "
            "activations lose ~5% cosine on sentence embeddings), asymmetric because inputs after "
            "GELU/ReLU are one-sided: on all-MiniLM-L6-v2 with 7-bit activations (CPUs without "
            "VNNI) mean cosine 0.9969 asymmetric vs 0.9947 symmetric; the zero-point term costs "
            "one rank-1 update of the output"
        ),
    ),
    **LAYER_KIND_SPECS,
}


@plugin.hookimpl
def quantcore_schemes() -> Iterator[plugin.Scheme]:
    yield plugin.Scheme(
        name="int8",
        weight_format=FORMAT,
        layer_specs=LAYER_SPECS,
        quantize_weight=quantize_weight,
        dequantize_weight=dequantize_weight,
        description="INT8 dynamic: int8 weights, activations quantized per call",
        aliases=("qint8", "dynamic_int8"),
        torch_dtypes=(torch.int8, torch.qint8),
        default=True,
    )


@plugin.hookimpl
def quantcore_kernel_backends() -> Iterator[plugin.KernelBackend]:
    yield from _reference_backends()
    yield from _cuda_backends()
    yield from _cpu_backends()


def _reference_backends() -> Iterator[plugin.KernelBackend]:
    """The oracles: one per op, always available."""
    yield plugin.KernelBackend(
        name="int8-linear-reference",
        op="linear",
        weight_format=FORMAT,
        prepare=prepare_reference_linear,
        reference=True,
        description="dequantize weights, fake-quantize inputs, float matmul (correctness oracle)",
    )
    yield plugin.KernelBackend(
        name="int8-embedding-reference",
        op="embedding",
        weight_format=FORMAT,
        prepare=prepare_reference_embedding,
        supports=supports_rows,
        reference=True,
        description="gather int8 rows, dequantize them, float lookup",
    )
    yield plugin.KernelBackend(
        name="int8-embedding-bag-reference",
        op="embedding_bag",
        weight_format=FORMAT,
        prepare=prepare_reference_embedding_bag,
        supports=supports_rows,
        reference=True,
        description="dequantize the distinct rows of the call, float embedding_bag",
    )
    yield plugin.KernelBackend(
        name="int8-conv-reference",
        op="conv",
        weight_format=FORMAT,
        prepare=prepare_reference_conv,
        supports=supports_conv,
        reference=True,
        description="dequantize weights, fake-quantize inputs, float convolution",
    )


def _cuda_backends() -> Iterator[plugin.KernelBackend]:
    yield plugin.KernelBackend(
        name="int8-linear-cuda-triton",
        op="linear",
        weight_format=FORMAT,
        prepare=kernels_cuda.prepare_triton_linear,
        is_available=kernels_cuda.triton_available,
        supports=kernels_cuda.supports_cuda_linear,
        priority=200,
        description=(
            "CUDA: fused per-token quantization + Triton int8 GEMM with the rescale in its "
            "epilogue; int8 weights dequantized in registers for up to 16 tokens"
        ),
    )
    yield plugin.KernelBackend(
        name="int8-linear-cuda-eager",
        op="linear",
        weight_format=FORMAT,
        prepare=kernels_cuda.prepare_eager_linear,
        is_available=kernels_cuda.cuda_available,
        supports=kernels_cuda.supports_int_mm,
        priority=150,
        description="CUDA without triton: torch ops around torch._int_mm (slower than fp16)",
    )


def _cpu_backends() -> Iterator[plugin.KernelBackend]:
    """Fast CPU kernels, most preferred first; each computes exactly what the reference does."""
    for op, prepare in (
        ("embedding", kernels_native.prepare_native_embedding),
        ("embedding_bag", kernels_native.prepare_native_embedding_bag),
    ):
        yield plugin.KernelBackend(
            name=f"int8-{op.replace('_', '-')}-native",
            op=op,
            weight_format=FORMAT,
            prepare=prepare,
            is_available=quantcore_native.available,
            supports=kernels_native.supports_native_table,
            priority=40,
            description=(
                "CPU: looked-up rows dequantized (renormalized, reduced) in one native call (an op "
                "under torch.compile)"
            ),
        )
    yield plugin.KernelBackend(
        name="int8-linear-native",
        op="linear",
        weight_format=FORMAT,
        prepare=kernels_native.prepare_native_linear,
        is_available=quantcore_native.available,
        supports=kernels_native.supports_native,
        priority=40,
        fused_activations=frozenset(quantcore_native.ACTIVATION_CODES),
        description=(
            "CPU: one native call per layer call (quantcore_native): per-token quantization, "
            "fbgemm int8 GEMM and the rescale epilogue"
        ),
    )
    yield plugin.KernelBackend(
        name="int8-recurrent-native",
        op="recurrent",
        weight_format=FORMAT,
        prepare=kernels_native.prepare_native_recurrent,
        is_available=quantcore_native.available,
        supports=kernels_native.supports_native_recurrent,
        priority=40,
        layer_reference=True,  # the layer's own step loop is this op's reference
        description=(
            "CPU: a whole LSTM/GRU/RNN sequence (every layer, direction and step) in one native "
            "call over its int8-linear-native pieces"
        ),
    )
    yield plugin.KernelBackend(
        name="int8-linear-fbgemm+onednn",
        op="linear",
        weight_format=FORMAT,
        prepare=kernels_cpu.prepare_fbgemm_onednn_linear,
        is_available=cpu_gemms.fbgemm_and_onednn_available,
        supports=kernels_cpu.supports_fbgemm_onednn,
        priority=30,
        description=(
            f"CPU: fbgemm int8 GEMM (deprecated op, warnings hidden) for calls of up to "
            f"{kernels_cpu.FBGEMM_MAX_TOKENS} tokens, oneDNN int8 GEMM above"
        ),
    )
    yield plugin.KernelBackend(
        name="int8-linear-onednn",
        op="linear",
        weight_format=FORMAT,
        prepare=kernels_cpu.prepare_onednn_linear,
        is_available=cpu_gemms.onednn_available,
        supports=kernels_cpu.supports_onednn,
        priority=20,
        description="CPU: oneDNN int8 GEMM (torch.ops.onednn.qlinear_pointwise), per-token scales",
    )
    yield plugin.KernelBackend(
        name="int8-linear-fbgemm",
        op="linear",
        weight_format=FORMAT,
        prepare=kernels_cpu.prepare_fbgemm_linear,
        is_available=cpu_gemms.fbgemm_available,
        supports=kernels_cpu.supports_fbgemm,
        priority=10,
        description="CPU: fbgemm int8 GEMM (deprecated op, warnings hidden), per-token scales",
    )
