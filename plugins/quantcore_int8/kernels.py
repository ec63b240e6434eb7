"""Kernel backends for int8 layers. The reference backend is the correctness oracle: dequantize,
simulate the activation quantization, and run the float op."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from quantcore.plugin import KernelRequest
from quantcore_int8.cpu_gemms import activation_bits
from quantcore_int8.quantization import dequantize_weight, fake_quantize_activation


def prepare_reference_linear(request: KernelRequest) -> Callable[[torch.Tensor], torch.Tensor]:
    weight, bias, activation = request.weight, request.bias, request.activation
    bits = None if activation is None else activation_bits(activation, request.device)

    def linear(x: torch.Tensor) -> torch.Tensor:
        w = dequantize_weight(weight)
        if activation is not None:
            x_q = fake_quantize_activation(x, activation, bits)
            b = None if bias is None else bias.to(torch.float32)
            return F.linear(x_q, w, b).to(x.dtype)
        return F.linear(x, w.to(x.dtype), None if bias is None else bias.to(x.dtype))

    return linear
