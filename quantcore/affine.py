"""Affine quantization, the arithmetic most integer formats share:
``q = clamp(round(x / scale) + zero_point, qmin, qmax)`` and ``x ~ (q - zero_point) * scale``.

Pure functions on plain tensors, for any format's ``quantize_weight`` / ``dequantize_weight`` and
kernels. Scales (and zero points) follow the :class:`~quantcore.plugin.WeightSpec` granularity:

* per tensor: one value (a 0-d tensor);
* per channel: one per slice along ``axis``, shape ``[rows]``;
* per group: one per group of ``group_size`` consecutive elements of each slice (the slice
  flattened in memory order: the input axis of a linear weight), shape ``[rows, groups]``.
"""

from __future__ import annotations

import torch

from quantcore.errors import LayerSkipped
from quantcore.registrations import Observer
from quantcore.specs import Granularity, QuantParams, WeightSpec


def _rows_first(tensor: torch.Tensor, axis: int) -> torch.Tensor:
    """``tensor`` with ``axis`` first and everything else flattened: ``[rows, elements]``."""
    return tensor.movedim(axis, 0).reshape(tensor.shape[axis], -1)


def group_view(tensor: torch.Tensor, axis: int, group_size: int) -> torch.Tensor:
    """``tensor`` as ``[rows * groups, group_size]``: one row per group, so a per-channel
    computation (an observer's, say) gives per-group values. A slice whose length is not a
    multiple of ``group_size`` cannot be grouped: LayerSkipped says so."""
    rows = _rows_first(tensor, axis)
    if rows.shape[1] % group_size:
        raise LayerSkipped(
            f"weight rows of {rows.shape[1]} elements do not split into groups of {group_size}"
        )
    return rows.reshape(-1, group_size)


def affine_params(
    weight: torch.Tensor, spec: WeightSpec, observer: Observer, qmin: int, qmax: int
) -> QuantParams:
    """The observer's scale (and zero point) for ``weight`` at ``spec``'s granularity.

    Observers compute per tensor or per channel; per group is per channel on
    :func:`group_view`, reshaped to ``[rows, groups]``, so every observer serves groups.
    """
    axis = spec.axis % weight.dim() if weight.dim() else 0
    if spec.granularity is not Granularity.PER_GROUP:
        return observer.compute(
            weight,
            granularity=spec.granularity,
            axis=axis,
            symmetric=spec.symmetric,
            qmin=qmin,
            qmax=qmax,
        )
    assert spec.group_size is not None
    groups = group_view(weight, axis, spec.group_size)
    params = observer.compute(
        groups,
        granularity=Granularity.PER_CHANNEL,
        axis=0,
        symmetric=spec.symmetric,
        qmin=qmin,
        qmax=qmax,
    )
    shape = (weight.shape[axis], -1)
    zero_point = None if params.zero_point is None else params.zero_point.reshape(shape)
    return QuantParams(params.scale.reshape(shape), zero_point, qmin, qmax)


def expand_params(
    values: torch.Tensor, like: torch.Tensor, axis: int, group_size: int | None = None
) -> torch.Tensor:
    """Per-tensor, per-channel (``[rows]``) or per-group (``[rows, groups]``) values repeated
    to ``like``'s shape, to combine with it elementwise."""
    if values.dim() == 0:
        return values
    axis = axis % like.dim()
    moved = list(like.movedim(axis, 0).shape)
    if group_size is None:
        shape = [1] * like.dim()
        shape[axis] = -1
        return values.reshape(shape)
    per_element = values.repeat_interleave(group_size, dim=1)  # [rows, elements]
    return per_element.reshape(moved).movedim(0, axis)


def quantize_affine(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    *,
    axis: int = 0,
    group_size: int | None = None,
    qmin: int,
    qmax: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``clamp(round(x / scale) + zero_point, qmin, qmax)`` as ``dtype``, computed in float32."""
    q = (x.to(torch.float32) / expand_params(scale, x, axis, group_size)).round_()
    if zero_point is not None:
        q.add_(expand_params(zero_point, x, axis, group_size))
    return q.clamp_(qmin, qmax).to(dtype)


def dequantize_affine(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    *,
    axis: int = 0,
    group_size: int | None = None,
) -> torch.Tensor:
    """``(q - zero_point) * scale`` in float32 (a new tensor)."""
    values = q.to(torch.float32)
    if zero_point is not None:
        values = values - expand_params(zero_point, values, axis, group_size)
    return values * expand_params(scale, values, axis, group_size)
