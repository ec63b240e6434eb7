"""Native int8 kernels for x86 CPUs (quantcore_native): each layer call is one C++ call.

It quantizes the activations per token exactly as ``quantize_activation`` does (same float32
operations, round half to even), runs fbgemm's u8 x s8 GEMM with int32 sums, and applies the
per-token scale, the zero-point term and the bias in one pass over the output. So it computes
what the reference computes, up to float summation order, for every token count, with no Python
per token. Recurrent layers whose linear pieces all run it get the whole sequence (every layer,
direction and time step) in one more native call.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import quantcore_native
import torch
import torch.nn.functional as F
from quantcore_native import (
    EmbeddingBagKernel,
    EmbeddingKernel,
    LinearKernel,
    RecurrentKernel,
    supports_recurrent,
    supports_table,
)

from quantcore.plugin import KernelRequest
from quantcore_int8 import cpu_gemms
from quantcore_int8.kernels_cpu import channel_scales, supports_per_token
from quantcore_int8.kernels_embedding import (
    prepare_reference_embedding,
    prepare_reference_embedding_bag,
)
from quantcore_int8.quantization import dequantize_weight, fake_quantize_activation

if TYPE_CHECKING:
    from quantcore_native import _C


@functools.cache
def native_int8_exact() -> bool:
    """Whether the native GEMM takes 8-bit activations exactly on this CPU: without VNNI, x86
    int8 GEMMs add pairs of u8 x s8 products in saturating int16."""
    if not quantcore_native.available():
        return False
    native = quantcore_native.extension()
    k = 64
    weight = torch.full((4, k), 127, dtype=torch.int8)
    packed = native.Int8Linear(weight, torch.ones(4), 8, False)
    # every input 1.0: scale 1/255, each token quantizes to 255 (the largest u8)
    y = native.linear(torch.ones(2, k), packed, None)
    return abs(float(y[0, 0]) - 127 * k) < 1e-3 * 127 * k


def supports_native(request: KernelRequest) -> bool:
    return supports_per_token(request, native_int8_exact)


class NativeInt8Linear(LinearKernel):
    """One layer's prepared native int8 linear."""

    def __init__(self, request: KernelRequest) -> None:
        super().__init__(request)
        assert request.activation is not None
        scales = channel_scales(request.weight)
        assert scales is not None
        self.scales = scales
        self.activation = request.activation
        self.bits = cpu_gemms.activation_bits(request.activation, request.device)

    def make_packed(self, plain: torch.Tensor) -> _C.NativeLinear:
        packed: _C.Int8Linear = self.native.Int8Linear(
            plain, self.scales, self.bits, self.activation.symmetric
        )
        return packed

    def unpack(self, packed: _C.NativeLinear) -> torch.Tensor:
        assert isinstance(packed, self.native.Int8Linear)
        plain: torch.Tensor = packed.unpack()
        return plain

    def differentiable(self, x: torch.Tensor) -> torch.Tensor:
        x_q = fake_quantize_activation(x, self.activation, self.bits)
        return F.linear(x_q, dequantize_weight(self.plain_weight()), self.bias).to(x.dtype)


def prepare_native_linear(request: KernelRequest) -> NativeInt8Linear:
    return NativeInt8Linear(request)


def supports_native_recurrent(request: KernelRequest) -> bool:
    return supports_recurrent(request, NativeInt8Linear)


def prepare_native_recurrent(request: KernelRequest) -> RecurrentKernel:
    return RecurrentKernel(request)


def supports_native_table(request: KernelRequest) -> bool:
    return request.weight.format == "int8" and supports_table(request)


def prepare_native_embedding(request: KernelRequest) -> EmbeddingKernel:
    return EmbeddingKernel(request, prepare_reference_embedding(request))


def prepare_native_embedding_bag(request: KernelRequest) -> EmbeddingBagKernel:
    return EmbeddingBagKernel(request, prepare_reference_embedding_bag(request))
