"""Built-in observers. An observer turns a tensor into scale/zero-point and knows nothing about
modules or formats; schemes decide which observer each layer kind uses."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from quantcore import plugin
from quantcore.plugin import Granularity, QuantParams


def _reduce_dims(tensor: torch.Tensor, granularity: Granularity, axis: int) -> torch.Tensor:
    """``tensor`` as [slices, elements] for per-channel, or [1, elements] for per-tensor."""
    if granularity is Granularity.PER_TENSOR or tensor.dim() == 0:
        return tensor.reshape(1, -1)
    if granularity in (Granularity.PER_CHANNEL, Granularity.PER_TOKEN):
        return tensor.movedim(axis, 0).reshape(tensor.shape[axis], -1)
    raise ValueError(f"observer cannot compute parameters for granularity {granularity}")


def params_from_range(
    low: torch.Tensor, high: torch.Tensor, *, symmetric: bool, qmin: int, qmax: int
) -> QuantParams:
    """Scale/zero-point that map [low, high] (widened to include 0) onto [qmin, qmax].

    Degenerate ranges (all zeros, denormals) get the smallest normal scale, so they quantize to
    exact zeros without dividing by zero; ranges near float32's limit get a finite scale;
    infinities must be rejected by the caller.
    """
    low = torch.minimum(low.float(), torch.zeros_like(low, dtype=torch.float32))
    high = torch.maximum(high.float(), torch.zeros_like(high, dtype=torch.float32))
    tiny = torch.finfo(torch.float32).tiny
    if symmetric:
        bound = torch.maximum(-low, high)
        scale = (bound / ((qmax - qmin) / 2)).clamp_min(tiny)
        return QuantParams(scale=scale, zero_point=None, qmin=qmin, qmax=qmax)
    # high / n - low / n, not (high - low) / n: the difference overflows near float32's limit
    scale = (high / (qmax - qmin) - low / (qmax - qmin)).clamp_min(tiny)
    zero_point = (qmin - torch.round(low / scale)).clamp(qmin, qmax).to(torch.int32)
    return QuantParams(scale=scale, zero_point=zero_point, qmin=qmin, qmax=qmax)


def minmax(
    tensor: torch.Tensor,
    *,
    granularity: Granularity,
    axis: int,
    symmetric: bool,
    qmin: int,
    qmax: int,
) -> QuantParams:
    """The exact range of the values: no clipping, so no value saturates."""
    rows = _reduce_dims(tensor.detach(), granularity, axis)
    if rows.shape[1] == 0:
        low = high = torch.zeros(rows.shape[0], dtype=torch.float32, device=tensor.device)
    else:
        values = rows.float()  # amin + amax: torch.aminmax over rows is several times slower
        low, high = values.amin(1), values.amax(1)
    params = params_from_range(low, high, symmetric=symmetric, qmin=qmin, qmax=qmax)
    if granularity is Granularity.PER_TENSOR:
        zp = None if params.zero_point is None else params.zero_point.reshape(())
        return QuantParams(params.scale.reshape(()), zp, qmin, qmax)
    return params


@plugin.hookimpl
def quantcore_observers() -> Iterator[plugin.Observer]:
    yield plugin.Observer(
        name="minmax",
        compute=minmax,
        description="exact min/max range, per tensor or per channel; nothing saturates",
    )
