"""nn.Conv1d, nn.Conv2d, nn.Conv3d: per-output-channel quantized weights run by the scheme's
"conv" kernels (int8: inputs quantized at every call). Transposed convolutions are not claimed:
they are reported as skipped (no mapper)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn

from quantcore.plugin import (
    ActivationSpec,
    ConversionContext,
    KernelBackend,
    KernelRequest,
    QuantizedModule,
    QuantizedWeight,
    kernel_request,
    register_weight,
)
from quantcore_layers.common import module_bias, module_tensor, refuse_overridden_forward

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class QuantizedConv(QuantizedModule):
    """Drop-in for nn.Conv1d/2d/3d (groups, dilation, stride, every padding and padding mode)."""

    def __init__(
        self,
        source: nn.Conv1d | nn.Conv2d | nn.Conv3d,
        weight: QuantizedWeight,
        bias: torch.Tensor | None,
        activation: ActivationSpec | None,
        backends: tuple[KernelBackend, ...],
    ) -> None:
        super().__init__("conv", backends)
        self.dims = len(source.kernel_size)
        self.in_channels = source.in_channels
        self.out_channels = source.out_channels
        self.kernel_size = tuple(source.kernel_size)
        self.stride = tuple(source.stride)
        self.padding = source.padding if isinstance(source.padding, str) else tuple(source.padding)
        self.dilation = tuple(source.dilation)
        self.groups = source.groups
        self.padding_mode = source.padding_mode
        self._reversed_padding_repeated_twice = list(source._reversed_padding_repeated_twice)
        self.weight_format = weight.format
        self.weight_spec = weight.spec
        self.activation = activation
        register_weight(self, weight)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self._prepare_kernel()

    def _kernel_request(self) -> KernelRequest:
        return kernel_request(
            self,
            "conv",
            dims=self.dims,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            padding_mode=self.padding_mode,
            reversed_padding=tuple(self._reversed_padding_repeated_twice),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._call_kernel(x)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, groups={self.groups}, format={self.weight_format}, "
            f"kernel={self.kernel_name}"
        )


def is_conv(module: nn.Module) -> bool:
    return isinstance(module, _CONVS) and not isinstance(module, QuantizedModule)


def convert_conv(module: nn.Module, ctx: ConversionContext) -> nn.Module:
    assert isinstance(module, _CONVS)
    refuse_overridden_forward(module, next(c for c in _CONVS if isinstance(module, c)))
    weight = ctx.quantize_weight(module_tensor(module, "weight", ctx))
    return QuantizedConv(
        module,
        weight,
        module_bias(module, "bias", ctx),
        ctx.spec.activation,
        ctx.kernel_candidates("conv"),
    )


def conv_state_dict_layers(state_dict: Mapping[str, torch.Tensor]) -> Iterator[str]:
    """Prefixes of a 3-, 4- or 5-D float ``weight`` (Conv1d/2d/3d), with an optional ``bias`` of
    one value per output channel."""
    for key, tensor in state_dict.items():
        if key != "weight" and not key.endswith(".weight"):
            continue
        if tensor.dim() not in (3, 4, 5) or not tensor.is_floating_point():
            continue
        prefix = key[: -len("weight")]
        bias = state_dict.get(prefix + "bias")
        if bias is None or tuple(bias.shape) == (tensor.shape[0],):
            yield prefix


def convert_conv_state_dict(
    prefix: str, tensors: Mapping[str, torch.Tensor], ctx: ConversionContext
) -> dict[str, torch.Tensor]:
    out = dict(ctx.quantize_weight(tensors["weight"]).tensors("weight"))
    for key in sorted(set(tensors) - {"weight"}):
        out[key] = ctx.clone(tensors[key])
    return out
