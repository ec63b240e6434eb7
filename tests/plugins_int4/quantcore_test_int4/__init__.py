"""A third-party scheme, as the tests install it through its own distribution's entry point:
INT4 weight-only with one scale and zero point per group of 32 inputs (torchao's
``int4_weight_only`` layout), two values packed in each byte of ``QuantizedWeight.data``.

It is written only against ``quantcore.plugin``; quantcore's kernel has no code for it. The
built-in "linear" mapper converts the layers, the kernel's runtime holds and saves the packed
tensors, the manifest records the group size, and ``quantcore.load`` rebuilds the layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from quantcore import plugin
from quantcore.plugin import Granularity, LayerSpec, QuantizedWeight, WeightSpec

FORMAT = "int4-test"
GROUP_SIZE = 32
QMIN, QMAX = 0, 15  # unsigned 4-bit with a zero point per group, as torchao's uint4


def pack(q: torch.Tensor) -> torch.Tensor:
    """Values in [0, 15] -> uint8, two per byte (even index in the low nibble)."""
    rows = q.to(torch.uint8).reshape(q.shape[0], -1)
    return rows[:, 0::2] | (rows[:, 1::2] << 4)


def unpack(data: torch.Tensor) -> torch.Tensor:
    """uint8 ``[rows, n / 2]`` -> uint8 values ``[rows, n]``."""
    low, high = data & 0x0F, data >> 4
    return torch.stack((low, high), dim=-1).reshape(data.shape[0], -1)


def quantize_weight(
    weight: torch.Tensor, spec: WeightSpec, observer: plugin.Observer | None
) -> QuantizedWeight:
    if observer is None or weight.dim() != 2 or weight.shape[1] % 2:
        raise plugin.LayerSkipped("int4-test packs 2-D weights with an even number of inputs")
    params = plugin.affine_params(weight, spec, observer, QMIN, QMAX)
    q = plugin.quantize_affine(
        weight,
        params.scale,
        params.zero_point,
        axis=spec.axis,
        group_size=spec.group_size,
        qmin=QMIN,
        qmax=QMAX,
        dtype=torch.uint8,
    )
    zero_point = None if params.zero_point is None else params.zero_point.to(torch.uint8)
    return QuantizedWeight(FORMAT, pack(q), params.scale.float(), zero_point, spec)


def dequantize_weight(weight: QuantizedWeight) -> torch.Tensor:
    assert weight.scale is not None and weight.spec is not None
    return plugin.dequantize_affine(
        unpack(weight.data),
        weight.scale,
        None if weight.zero_point is None else weight.zero_point.to(torch.int32),
        axis=weight.spec.axis,
        group_size=weight.spec.group_size,
    )


def prepare_linear(request: plugin.KernelRequest) -> Callable[[torch.Tensor], torch.Tensor]:
    """Weight-only: dequantize once per call, float matmul in the input's dtype."""
    weight, bias = request.weight, request.bias

    def linear(x: torch.Tensor) -> torch.Tensor:
        w = dequantize_weight(weight).to(x.dtype)
        return F.linear(x, w, None if bias is None else bias.to(x.dtype))

    return linear


@plugin.hookimpl
def quantcore_schemes() -> Iterator[plugin.Scheme]:
    yield plugin.Scheme(
        name="int4-test",
        weight_format=FORMAT,
        layer_specs={
            "linear": LayerSpec(
                WeightSpec(Granularity.PER_GROUP, symmetric=False, group_size=GROUP_SIZE),
                activation=None,
                reason="weight-only, groups of 32 inputs with their own scale and zero point",
            )
        },
        quantize_weight=quantize_weight,
        dequantize_weight=dequantize_weight,
        description="test scheme: int4 weight-only, group size 32, packed two per byte",
        aliases=("w4g32",),
    )


@plugin.hookimpl
def quantcore_kernel_backends() -> Iterator[plugin.KernelBackend]:
    yield plugin.KernelBackend(
        name="int4-test-linear-reference",
        op="linear",
        weight_format=FORMAT,
        prepare=prepare_linear,
        reference=True,
    )
