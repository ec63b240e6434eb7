"""Native float16-weight kernels for x86 CPUs (quantcore_native): fbgemm's fp16 GEMM (float32
activations, float16 weights widened in registers, float32 sums) in one C++ call per layer call,
and whole LSTM/GRU/RNN sequences over such layers in one call.

On CPUs without AVX512, calls of many tokens (more than ``FBGEMM_FP16_MAX_TOKENS``) widen the
weight and run torch's float32 GEMM instead, as the pure-torch kernel does: there MKL's float32
GEMM was the faster one (all-MiniLM-L6-v2 at 32x128 ran about 10 % slower on fbgemm). With
AVX512, fbgemm's fp16 GEMM took 0.87-0.95x the widened float32 GEMM's time at 1024-4096 tokens
(MiniLM's and a 1B decoder's layer shapes, 1 and 2 threads), so it serves every call. Inputs in
other dtypes (bfloat16, ...) run in their own dtype, as the pure-torch kernel does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
from quantcore_fp16.kernels_cpu import FBGEMM_FP16_MAX_TOKENS
from quantcore_fp16.kernels_embedding import (
    prepare_reference_embedding,
    prepare_reference_embedding_bag,
)

if TYPE_CHECKING:
    from quantcore_native import _C


class NativeFp16Linear(LinearKernel):
    """One layer's prepared native fp16 linear."""

    def __init__(self, request: KernelRequest) -> None:
        super().__init__(request)
        self.serves_many_tokens = False  # then the plain copy stays, for torch's GEMM
        avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
        self.widen_above = None if avx512 else FBGEMM_FP16_MAX_TOKENS * self.in_features

    def make_packed(self, plain: torch.Tensor) -> _C.NativeLinear:
        packed: _C.Fp16Linear = self.native.Fp16Linear(plain)
        return packed

    def unpack(self, packed: _C.NativeLinear) -> torch.Tensor:
        assert isinstance(packed, self.native.Fp16Linear)
        plain: torch.Tensor = packed.unpack()
        return plain

    def release_plain_weight(self) -> bool:
        return not self.serves_many_tokens and super().release_plain_weight()

    def differentiable(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.plain_data().to(x.dtype), bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            return self.call_in_torch(x)
        if self.widen_above is not None and x.numel() > self.widen_above:
            if not self.serves_many_tokens:  # the plain copy comes back (from the pack), once
                self.serves_many_tokens = True
                self.plain = self.plain_data()
            return self.call_in_torch(x)
        return super().__call__(x)


def supports_native_fp16(request: KernelRequest) -> bool:
    data = request.weight.data
    return (
        request.device.type == "cpu"
        and request.weight.format == "fp16"
        and data.dtype == torch.float16
        and data.dim() == 2
    )


def prepare_native_linear(request: KernelRequest) -> NativeFp16Linear:
    return NativeFp16Linear(request)


def supports_native_recurrent(request: KernelRequest) -> bool:
    return supports_recurrent(request, NativeFp16Linear)


def prepare_native_recurrent(request: KernelRequest) -> RecurrentKernel:
    return RecurrentKernel(request)


def supports_native_table(request: KernelRequest) -> bool:
    """Layers whose output is float32: the native lookups reduce in float32, while FP16 layers
    of another dtype reduce in their own, as the reference does."""
    return (
        request.weight.format == "fp16"
        and request.options.get("dtype") == torch.float32
        and supports_table(request)
    )


def prepare_native_embedding(request: KernelRequest) -> EmbeddingKernel:
    return EmbeddingKernel(request, prepare_reference_embedding(request))


def prepare_native_embedding_bag(request: KernelRequest) -> EmbeddingBagKernel:
    return EmbeddingBagKernel(request, prepare_reference_embedding_bag(request))
