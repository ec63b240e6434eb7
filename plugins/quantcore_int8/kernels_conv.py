"""Reference int8 kernel for convolutions: dequantize the per-output-channel weights, simulate
the activation quantization, run torch's float convolution."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from quantcore.plugin import ActivationSpec, Granularity, KernelRequest
from quantcore_int8.quantization import dequantize_weight, fake_quantize_activation

CONV_FUNCTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def fake_quantize_conv_input(x: torch.Tensor, spec: ActivationSpec, dims: int) -> torch.Tensor:
    """Per tensor, or per sample for ``per_token`` (one scale per batch element: a convolution
    mixes neighbouring positions and channels, so no finer input scale fits an integer GEMM)."""
    if spec.granularity is Granularity.PER_TOKEN and x.dim() == dims + 2:
        return fake_quantize_activation(x.reshape(x.shape[0], -1), spec).reshape(x.shape)
    per_tensor = ActivationSpec(Granularity.PER_TENSOR, spec.symmetric)
    return fake_quantize_activation(x, per_tensor)


def supports_conv(request: KernelRequest) -> bool:
    activation = request.activation
    return activation is None or activation.granularity in (
        Granularity.PER_TENSOR,
        Granularity.PER_TOKEN,
    )


def prepare_reference_conv(request: KernelRequest) -> Callable[[torch.Tensor], torch.Tensor]:
    weight, bias, activation, options = (
        request.weight,
        request.bias,
        request.activation,
        request.options,
    )
    dims: int = options["dims"]
    conv = CONV_FUNCTIONS[dims]
    padding_mode: str = options.get("padding_mode", "zeros")
    padding = 0 if padding_mode != "zeros" else options.get("padding", 0)

    def run(x: torch.Tensor) -> torch.Tensor:
        if padding_mode != "zeros":
            x = F.pad(x, list(options["reversed_padding"]), mode=padding_mode)
        w = dequantize_weight(weight)
        if activation is None:
            b = None if bias is None else bias.to(x.dtype)
            return conv(
                x,
                w.to(x.dtype),
                b,
                options["stride"],
                padding,
                options["dilation"],
                options["groups"],
            )
        x_q = fake_quantize_conv_input(x, activation, dims)
        b = None if bias is None else bias.to(torch.float32)
        out = conv(x_q, w, b, options["stride"], padding, options["dilation"], options["groups"])
        return out.to(x.dtype)

    return run
