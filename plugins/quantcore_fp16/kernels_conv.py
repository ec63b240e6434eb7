"""Reference fp16 kernel for convolutions: upcast the float16 weights to the input's dtype, then
torch's convolution (padding modes applied as nn.Conv*d applies them)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from quantcore.plugin import KernelRequest

CONV_FUNCTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def prepare_reference_conv(request: KernelRequest) -> Callable[[torch.Tensor], torch.Tensor]:
    weight, bias, options = request.weight.data, request.bias, request.options
    conv = CONV_FUNCTIONS[options["dims"]]
    padding_mode: str = options.get("padding_mode", "zeros")
    padding = 0 if padding_mode != "zeros" else options.get("padding", 0)

    def run(x: torch.Tensor) -> torch.Tensor:
        if padding_mode != "zeros":
            x = F.pad(x, list(options["reversed_padding"]), mode=padding_mode)
        b = None if bias is None else bias.to(x.dtype)
        return conv(
            x,
            weight.to(x.dtype),
            b,
            options["stride"],
            padding,
            options["dilation"],
            options["groups"],
        )

    return run
