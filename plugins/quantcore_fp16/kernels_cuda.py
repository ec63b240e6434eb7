"""CUDA kernel backend for fp16 linear layers: the matmul runs in float16 on the tensor cores,
as in a ``.half()`` model. The reference backend instead upcasts the weights to the input's dtype
on every call (right on a CPU without fast fp16 math, several times slower on a GPU)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from quantcore.plugin import KernelRequest


def cuda_available() -> bool:
    return bool(torch.cuda.is_available())


def supports_cuda_linear(request: KernelRequest) -> bool:
    return (
        request.device.type == "cuda"
        and request.op == "linear"
        and request.weight.data.dtype == torch.float16
        and request.weight.data.dim() == 2
    )


def prepare_cuda_linear(request: KernelRequest) -> Callable[[torch.Tensor], torch.Tensor]:
    """Cast the input to float16 (a no-op for fp16 models), multiply, cast back: inputs beyond
    the float16 range overflow exactly as they would in a ``.half()`` model."""
    weight = request.weight.data
    bias = None if request.bias is None else request.bias.detach().to(torch.float16)

    def linear(x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float16:
            return F.linear(x, weight, bias)
        return F.linear(x.to(torch.float16), weight, bias).to(x.dtype)

    return linear
