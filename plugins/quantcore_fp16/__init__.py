"""The built-in FP16 scheme: weights stored in float16 (half the bytes), computed in the input's
dtype so a CPU without fast fp16 math never runs slower than fp32."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import quantcore_native
import torch
import torch.nn.functional as F

from quantcore import plugin
from quantcore.plugin import Granularity, KernelRequest, LayerSpec, QuantizedWeight, WeightSpec
from quantcore_fp16 import kernels_cpu, kernels_cuda, kernels_native
from quantcore_fp16.kernels_conv import prepare_reference_conv
from quantcore_fp16.kernels_embedding import (
    prepare_reference_embedding,
    prepare_reference_embedding_bag,
)

FORMAT = "fp16"
_FP16_MAX = torch.finfo(torch.float16).max

LAYER_SPECS = {
    "linear": LayerSpec(
        weight=WeightSpec(Granularity.NONE, symmetric=True, observer=None),
        activation=None,
        reason="float16 needs no scale; activations stay in the caller's dtype",
    ),
    **{
        kind: LayerSpec(
            weight=WeightSpec(Granularity.NONE, symmetric=True, observer=None),
            activation=None,
            reason=f"float16 weights, no scale; {how}",
        )
        for kind, how in {
            "attention": "projections upcast to the input's dtype, attention math in that dtype",
            "recurrent": "each gate matrix upcast to the input's dtype, recurrence in that dtype",
            "embedding": "looked-up rows upcast to the layer's original dtype",
            "embedding_bag": "looked-up rows upcast to the layer's original dtype, then reduced",
            "conv": "weights upcast to the input's dtype, then the float convolution",
        }.items()
    },
}


def quantize_weight(
    weight: torch.Tensor, spec: WeightSpec, observer: plugin.Observer | None
) -> QuantizedWeight:
    # one pass without temporaries: NaN propagates through aminmax, so finite ends mean all finite
    low, high = (float(v) for v in torch.aminmax(weight.detach()))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise plugin.LayerSkipped("weight contains NaN or Inf")
    if max(-low, high) > _FP16_MAX:
        raise plugin.LayerSkipped(f"weight values exceed the float16 range (±{_FP16_MAX:g})")
    return QuantizedWeight(FORMAT, weight.to(torch.float16), spec=spec)


def dequantize_weight(weight: QuantizedWeight) -> torch.Tensor:
    return weight.data.to(torch.float32)


def prepare_reference_linear(request: KernelRequest) -> Callable[[torch.Tensor], torch.Tensor]:
    weight, bias = request.weight.data, request.bias

    def linear(x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    return linear


@plugin.hookimpl
def quantcore_schemes() -> Iterator[plugin.Scheme]:
    yield plugin.Scheme(
        name="fp16",
        weight_format=FORMAT,
        layer_specs=LAYER_SPECS,
        quantize_weight=quantize_weight,
        dequantize_weight=dequantize_weight,
        description="FP16: float16 weights, computed in the input's dtype",
        aliases=("float16", "half"),
        torch_dtypes=(torch.float16,),
    )


@plugin.hookimpl
def quantcore_kernel_backends() -> Iterator[plugin.KernelBackend]:
    yield from _reference_backends()
    yield from _fast_backends()


def _reference_backends() -> Iterator[plugin.KernelBackend]:
    """The oracles: one per op, always available."""
    yield plugin.KernelBackend(
        name="fp16-linear-reference",
        op="linear",
        weight_format=FORMAT,
        prepare=prepare_reference_linear,
        reference=True,
        description="upcast float16 weights to the input's dtype, then the float matmul",
    )
    for op, prepare, what in (
        ("embedding", prepare_reference_embedding, "gather float16 rows, upcast, float lookup"),
        ("embedding_bag", prepare_reference_embedding_bag, "upcast the rows of the call, reduce"),
        ("conv", prepare_reference_conv, "upcast float16 weights, float convolution"),
    ):
        yield plugin.KernelBackend(
            name=f"fp16-{op.replace('_', '-')}-reference",
            op=op,
            weight_format=FORMAT,
            prepare=prepare,
            reference=True,
            description=what,
        )


def _fast_backends() -> Iterator[plugin.KernelBackend]:
    """CUDA, then CPU kernels, most preferred first."""
    yield plugin.KernelBackend(
        name="fp16-linear-cuda",
        op="linear",
        weight_format=FORMAT,
        prepare=kernels_cuda.prepare_cuda_linear,
        is_available=kernels_cuda.cuda_available,
        supports=kernels_cuda.supports_cuda_linear,
        priority=200,
        description="CUDA: float16 matmul on the tensor cores, input cast to float16 and back",
    )
    for op, prepare in (
        ("embedding", kernels_native.prepare_native_embedding),
        ("embedding_bag", kernels_native.prepare_native_embedding_bag),
    ):
        yield plugin.KernelBackend(
            name=f"fp16-{op.replace('_', '-')}-native",
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
        name="fp16-linear-native",
        op="linear",
        weight_format=FORMAT,
        prepare=kernels_native.prepare_native_linear,
        is_available=quantcore_native.available,
        supports=kernels_native.supports_native_fp16,
        priority=40,
        fused_activations=frozenset(quantcore_native.ACTIVATION_CODES),
        description=(
            f"CPU: one native call per layer call (quantcore_native): fbgemm fp16-weight GEMM "
            f"for float32 calls (without AVX512: widened weight + float GEMM above "
            f"{kernels_cpu.FBGEMM_FP16_MAX_TOKENS} tokens)"
        ),
    )
    yield plugin.KernelBackend(
        name="fp16-recurrent-native",
        op="recurrent",
        weight_format=FORMAT,
        prepare=kernels_native.prepare_native_recurrent,
        is_available=quantcore_native.available,
        supports=kernels_native.supports_native_recurrent,
        priority=40,
        layer_reference=True,  # the layer's own step loop is this op's reference
        description=(
            "CPU: a whole LSTM/GRU/RNN sequence (every layer, direction and step) in one native "
            "call over its fp16-linear-native pieces"
        ),
    )
    yield plugin.KernelBackend(
        name="fp16-linear-fbgemm+upcast",
        op="linear",
        weight_format=FORMAT,
        prepare=kernels_cpu.prepare_fbgemm_fp16_linear,
        is_available=kernels_cpu.fbgemm_fp16_available,
        supports=kernels_cpu.supports_fbgemm_fp16,
        priority=20,
        description=(
            f"CPU: fbgemm fp16-weight GEMM for float32 calls of up to "
            f"{kernels_cpu.FBGEMM_FP16_MAX_TOKENS} tokens, widened weight + float GEMM otherwise"
        ),
    )
