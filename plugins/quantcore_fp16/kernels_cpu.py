"""Fast float16-weight linear for CPUs without fast float16 arithmetic.

For a few tokens the GEMM is memory-bound, and fbgemm's fp16-weight kernel
(``torch.ops.quantized.linear_prepack_fp16`` / ``linear_dynamic_fp16``: float32 inputs, float16
weights widened on the fly, float32 accumulation, no quantized dtypes, no deprecation) reads half
the bytes of a float32 GEMM. For many tokens the one-off widening of the weight to float32 is
cheap next to the GEMM, and MKL's float32 GEMM beats fbgemm's (the whole of all-MiniLM-L6-v2 at
32x128 ran about 10 % slower on fbgemm here); that is the reference's math. Both compute the
float32 product of the same float16 weight values; only summation order differs.

Under ``torch.compile`` a call that fbgemm serves enters the graph whole, as one opaque op
(``quantcore.plugin.call_in_graph`` with the kernel's graph handle): the packed weight is a script
object, which graphs cannot hold. (Widening the weight inside the graph instead took 1.1-1.9x
fbgemm's time at 16-128 tokens on all-MiniLM-L6-v2's layers.)

Memory: once the fbgemm pack exists, it is the layer's only copy (the plain weight is released,
quantcore.plugin.PackedWeightKernel) until the layer serves a call of many tokens; then a plain copy
comes back, once (unpacking costs several times the widening), and stays beside the pack.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from quantcore.plugin import KernelRequest, QuantizedWeight, call_in_graph, graph_handle

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


@functools.cache
def fbgemm_fp16_unpack_available() -> bool:
    """Whether fbgemm can give packed fp16 weights back (what lets the plain copy go)."""
    try:
        return torch.ops.quantized.linear_unpack_fp16 is not None
    except (AttributeError, RuntimeError):
        return False


def supports_fbgemm_fp16(request: KernelRequest) -> bool:
    data = request.weight.data
    return (
        request.device.type == "cpu"
        and request.weight.format == "fp16"
        and data.dtype == torch.float16
        and data.dim() == 2
    )


class _Fp16Linear:
    """One layer's prepared fp16 linear; the fbgemm packing is made on the first few-token call.
    From then on the packed copy can be the only one (quantcore.plugin.PackedWeightKernel): fbgemm gives
    the float16 values back exactly, for the layer's state dict or a first call of many tokens."""

    def __init__(self, request: KernelRequest) -> None:
        self.weight: torch.Tensor | None = request.weight.data
        self.serves_many_tokens = False  # then the plain copy stays, for MKL
        self.bias = request.bias
        self.packed: Any = None
        self.spec, self.scale = request.weight.spec, request.weight.scale
        self.zero_point = request.weight.zero_point
        self.after_graph_call: Callable[[], None] | None = None
        self.graph_handle = graph_handle(self, (request.weight.data.shape[0],))

    def _plain_weight_as(self, dtype: torch.dtype) -> torch.Tensor:
        """The float16 weight values in ``dtype`` (from the packed copy once it is the only one:
        fbgemm unpacks them as float32, which holds every float16 value exactly)."""
        if self.weight is not None:
            return self.weight.to(dtype)
        unpacked, _ = torch.ops.quantized.linear_unpack_fp16(self.packed)
        return unpacked.to(dtype)  # type: ignore[no-any-return]

    def _plain_fp16(self) -> torch.Tensor:
        return self._plain_weight_as(torch.float16)

    def release_plain_weight(self) -> bool:
        if self.packed is None or self.serves_many_tokens or not fbgemm_fp16_unpack_available():
            return False
        self.weight = None
        return True

    def plain_weight(self) -> QuantizedWeight:
        return QuantizedWeight(
            "fp16", self._plain_fp16(), scale=self.scale, zero_point=self.zero_point, spec=self.spec
        )

    def _fbgemm(self, x2: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            bias = None if self.bias is None else self.bias.detach().to(torch.float32)
            weight = self._plain_weight_as(torch.float32)
            self.packed = torch.ops.quantized.linear_prepack_fp16(weight, bias)
        out: torch.Tensor = torch.ops.quantized.linear_dynamic_fp16(x2, self.packed)
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.numel() // max(x.shape[-1], 1)
        differentiable = x.requires_grad and torch.is_grad_enabled()  # fbgemm has no autograd
        many = tokens > FBGEMM_FP16_MAX_TOKENS
        if many and not self.serves_many_tokens:
            self.serves_many_tokens = True
            self.weight = self._plain_fp16()  # back from the pack if it was released: once
        if differentiable or x.dtype != torch.float32 or tokens == 0 or many:
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return F.linear(x, self._plain_weight_as(x.dtype), bias)
        if torch.compiler.is_compiling():  # the packed weight cannot enter a graph; the call can
            return call_in_graph(self.graph_handle, x)
        if x.dim() >= 2:  # fbgemm takes [..., in_features] as it is (no reshapes: decode)
            return self._fbgemm(x)
        y: torch.Tensor = self._fbgemm(x.reshape(1, -1))
        return y.reshape(-1)


def prepare_fbgemm_fp16_linear(request: KernelRequest) -> Callable[[torch.Tensor], torch.Tensor]:
    return _Fp16Linear(request)
