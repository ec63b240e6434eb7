"""INT8 arithmetic on plain tensors: int8 values plus float32 scales (and int32 zero points for
asymmetric parameters). No quantized dtypes, no torch.ao."""

from __future__ import annotations

import torch

from quantcore import plugin
from quantcore.plugin import ActivationSpec, Granularity, QuantizedWeight, WeightSpec

FORMAT = "int8"
SYMMETRIC_RANGE = (-127, 127)  # restricted range: -128 has no positive twin, so signs stay exact
ASYMMETRIC_RANGE = (-128, 127)
_TINY = torch.finfo(torch.float32).tiny
_F32_MAX = torch.finfo(torch.float32).max


def quantize_weight(
    weight: torch.Tensor, spec: WeightSpec, observer: plugin.Observer | None
) -> QuantizedWeight:
    """Quantize a weight once, ahead of time."""
    if observer is None:
        raise plugin.LayerSkipped("the int8 scheme needs an observer for weights")
    if (
        weight.dtype == torch.float64
        and float(weight.abs().nan_to_num(0.0, 0.0, 0.0).max()) > _F32_MAX
    ):
        raise plugin.LayerSkipped(
            f"weight values exceed the float32 range of int8 scales (±{_F32_MAX:g})"
        )
    qmin, qmax = SYMMETRIC_RANGE if spec.symmetric else ASYMMETRIC_RANGE
    axis = spec.axis % weight.dim() if weight.dim() else 0
    params = plugin.affine_params(weight, spec, observer, qmin, qmax)
    scale = params.scale.to(torch.float32)
    # "minmax" scales come from the exact range, so a NaN or Inf anywhere makes its row's scale
    # non-finite: checking the scales spares a full pass over the weight (a third of the time).
    if not bool(torch.isfinite(scale).all()) or (
        observer.name != "minmax" and not bool(torch.isfinite(weight).all())
    ):
        raise plugin.LayerSkipped("weight contains NaN or Inf; int8 cannot represent it")
    zero_point = None if params.zero_point is None else params.zero_point.to(torch.int32)
    data = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    # Row blocks bound the float32 temporaries to a few MB, whatever the weight's size (an
    # embedding table can be half of a model): quantizing never holds a second float copy.
    per_row = axis == 0 and scale.dim() > 0
    rows = weight.shape[0] if weight.dim() else 1
    blocked = weight.dim() > 0 and (axis == 0 or spec.group_size is None)
    step = max(1, _CHUNK_ELEMENTS // max(1, weight[0].numel())) if blocked else rows
    for start in range(0, max(1, rows), step):
        block_rows = slice(start, start + step)
        block = weight[block_rows] if weight.dim() else weight
        target = data[block_rows] if weight.dim() else data
        target.copy_(
            plugin.quantize_affine(
                block,
                scale[block_rows] if per_row else scale,
                None if zero_point is None else zero_point[block_rows] if per_row else zero_point,
                axis=axis,
                group_size=spec.group_size,
                qmin=qmin,
                qmax=qmax,
                dtype=torch.int8,
            )
        )
    return QuantizedWeight(FORMAT, data, scale=scale, zero_point=zero_point, spec=spec)


def dequantize_weight(weight: QuantizedWeight) -> torch.Tensor:
    """float32 values of a quantized weight: the reference every kernel is checked against."""
    assert weight.scale is not None
    spec = weight.spec
    axis = spec.axis % weight.data.dim() if spec and weight.data.dim() else 0
    values = plugin.dequantize_affine(
        weight.data,
        weight.scale,
        weight.zero_point,
        axis=axis,
        group_size=spec.group_size if spec else None,
    )
    # a value within half a step of float32's limit may round up past it: saturate, don't overflow
    return values.clamp_(-_F32_MAX, _F32_MAX)


# Rows whose largest magnitude is below this quantize to zero (and 127 / bound stays finite).
MIN_ACTIVATION_BOUND = 1e-30
_CHUNK_ELEMENTS = 1 << 20  # float32 elements quantized at once


def activation_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range of a ``bits``-wide activation: symmetric ranges drop the most negative value."""
    if not 2 <= bits <= 8:
        raise ValueError(f"int8 activations take 2 to 8 bits, not {bits}")
    half = 1 << (bits - 1)
    return (-(half - 1) if symmetric else -half), half - 1


def quantize_activation(
    x: torch.Tensor, spec: ActivationSpec, bits: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Quantize an input on the fly: int8 values, scales (broadcastable) and optional zero points.

    Per token means one scale per row of the input flattened to [tokens, features]. ``bits``
    (default: the spec's, else 8) is the width actually used; kernels resolve ``spec.bits=None``
    per device. Symmetric values are ``round(x * (qmax / bound))``, asymmetric ones
    ``round(x * (1 / scale)) + zero_point``: a multiplication by the float32 reciprocal, as fbgemm
    and torchao quantize (a division costs the vector kernels several times more). The fast
    kernels compute the same float32 operations in the same order, so they agree to the last bit.
    """
    width = bits or spec.bits or 8
    xf = x.to(torch.float32)
    if spec.granularity is Granularity.PER_TOKEN:
        dims: tuple[int, ...] = (-1,)
    elif spec.granularity is Granularity.PER_TENSOR:
        dims = tuple(range(x.dim()))
    else:
        raise ValueError(
            f"int8 activations support per_token or per_tensor, not {spec.granularity}"
        )
    qmin, qmax = activation_range(width, spec.symmetric)
    if spec.symmetric:
        bound = xf.abs().amax(dim=dims, keepdim=True).clamp_min(MIN_ACTIVATION_BOUND)
        q = torch.round(xf * (qmax / bound)).clamp_(qmin, qmax).to(torch.int8)
        return q, bound / qmax, None
    low = xf.amin(dim=dims, keepdim=True).clamp_max(0)
    high = xf.amax(dim=dims, keepdim=True).clamp_min(0)
    steps = qmax - qmin  # high / n - low / n: the difference overflows near float32's limit
    scale = (high / steps - low / steps).clamp_min(_TINY)
    zero_point = (qmin - torch.round(low / scale)).clamp_(qmin, qmax)
    q = (torch.round(xf * scale.reciprocal()) + zero_point).clamp_(qmin, qmax).to(torch.int8)
    return q, scale, zero_point


def fake_quantize_activation(
    x: torch.Tensor, spec: ActivationSpec, bits: int | None = None
) -> torch.Tensor:
    """What the activation looks like after the quantize/dequantize round trip, in float32."""
    q, scale, zero_point = quantize_activation(x, spec, bits)
    values = q.to(torch.float32)
    if zero_point is not None:
        values = values - zero_point
    return (values * scale).clamp_(-_F32_MAX, _F32_MAX)  # saturate, as dequantize_weight does
