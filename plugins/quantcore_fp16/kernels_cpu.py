"""Fast float16-weight linear for CPUs without fast float16 arithmetic.

For a few tokens the GEMM is memory-bound, and fbgemm's fp16-weight kernel
(``torch.ops.quantized.linear_prepack_fp16`` / ``linear_dynamic_fp16``: float32 inputs, float16
weights widened on the fly, float32 accumulation, no quantized dtypes, no deprecation) reads half
the bytes of a float32 GEMM. For many tokens the one-off widening of the weight to float32 is
cheap next to the GEMM, and MKL's float32 GEMM beats fbgemm's; that is the reference's math.
Both compute the float32 product of the same float16 weight values; only summation order differs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from quantcore import KernelRequest

# Calls with at most this many tokens use the fbgemm fp16 kernel; more widen the weight.
FBGEMM_FP16_MAX_TOKENS = 1024


def fbgemm_fp16_available() -> bool:
    """Whether this torch build has the fbgemm fp16-weight linear ops."""
    try:
        ops = (torch.ops.quantized.linear_prepack_fp16, torch.ops.quantized.linear_dynamic_fp16)
    except (AttributeError, RuntimeError):
        return False
    engines = torch.backends.quantized.supported_engines
    return all(op is not None for op in ops) and ("fbgemm" in engines or "x86" in engines)


def supports_fbgemm_fp16(request: KernelRequest) -> bool:
    data = request.weight.data
    return (
        request.device.type == "cpu"
        and request.weight.format == "fp16"
        and data.dtype == torch.float16
        and data.dim() == 2
    )


class _Fp16Linear:
    """One layer's prepared fp16 linear; the fbgemm packing is made on the first few-token call."""

    def __init__(self, request: KernelRequest) -> None:
        self.weight = request.weight.data
        self.bias = request.bias
        self.packed: Any = None

    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def _fbgemm(self, x2: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            bias = None if self.bias is None else self.bias.detach().to(torch.float32)
            self.packed = torch.ops.quantized.linear_prepack_fp16(self.weight.float(), bias)
        out: torch.Tensor = torch.ops.quantized.linear_dynamic_fp16(x2, self.packed)
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.numel() // max(x.shape[-1], 1)
        differentiable = x.requires_grad and torch.is_grad_enabled()  # fbgemm has no autograd
        if differentiable or x.dtype != torch.float32 or not 0 < tokens <= FBGEMM_FP16_MAX_TOKENS:
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return F.linear(x, self.weight.to(x.dtype), bias)
        if x.dim() >= 2:  # fbgemm takes [..., in_features] as it is (no reshapes: decode)
            return self._fbgemm(x)  # type: ignore[no-any-return]
        y: torch.Tensor = self._fbgemm(x.reshape(1, -1))
        return y.reshape(self.weight.shape[0])


def prepare_fbgemm_fp16_linear(request: KernelRequest) -> Callable[[torch.Tensor], torch.Tensor]:
    return _Fp16Linear(request)
