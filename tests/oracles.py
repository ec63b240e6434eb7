"""Independent oracles for the int8 arithmetic: what the numbers must be, from the formulas alone.

Nothing here imports quantcore or its plugins, and everything is computed in float64, so a bug in
the library's quantization code (a wrong divisor, a wrong width, a lost zero point) cannot hide
by being shared with the check. Kernels are checked against :func:`int8_linear`; the library's
stored weights against :func:`weight_qparams` / :func:`quantize_weight` (and torch's own
``quantize_per_channel`` / ``quantize_per_tensor`` through :func:`torch_quantize_weight`);
on-the-fly activations against :func:`quantize_activation`.

The formulas (docs/schemes.md states them for users):

* weights, symmetric: ``scale = max|w| / 127``, ``q = clamp(round(w / scale), -127, 127)``;
* weights, asymmetric: the range ``[min(w, 0), max(w, 0)]`` onto ``[-128, 127]``:
  ``scale = (high - low) / 255``, ``zp = clamp(-128 - round(low / scale), -128, 127)``,
  ``q = clamp(round(w / scale) + zp, -128, 127)``;
* activations, per token (one row of the input flattened to ``[tokens, features]``), ``bits``
  wide: symmetric ``scale = max(max|x|, 1e-30) / qmax`` with ``qmax = 2**(bits-1) - 1`` and
  ``q`` in ``[-qmax, qmax]``; asymmetric as the weights, onto ``[-2**(bits-1), qmax]``;
* a range that is all zeros gets the smallest normal float32 as its scale (values quantize to
  exact zeros); ``round`` is round-half-to-even.

A float32 implementation may land on the other side of a rounding boundary when the exact
quotient lies within float32 rounding of ``k + 0.5``: such elements are reported as
``ambiguous`` and :class:`LinearOracle` allows one step for each (``slack``), so the checks stay
exact everywhere else.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch

WEIGHT_QMAX = 127
F32_TINY = torch.finfo(torch.float32).tiny  # the scale of an all-zero range
MIN_ACTIVATION_BOUND = 1e-30  # symmetric rows whose largest magnitude is below this give zeros
# How close (in steps) to k + 0.5 an exact quotient must be for float32 to round it either way:
# float32 computes q = x * (qmax / bound) or x * (1 / scale) with a few roundings of 6e-8 each,
# so at |q| <= 255 its value is off by at most ~6e-5 steps.
TIE_WINDOW = 1e-4
# float32 rounding of a kernel's result relative to the size of the terms it sums. Measured at 96
# input features: 7e-8 for the integer GEMMs (exact int32 sums, then a few float32 roundings),
# 4e-7 for the reference backend's float32 matmul. A kernel that sums in float32 drifts with
# about sqrt(in_features): pass a larger rtol for it on wide layers (~1e-7 * sqrt(K) * 4).
FLOAT32_RTOL = 1e-6


class Quantized(NamedTuple):
    """Integers from a formula, as int64, and where float32 may round them the other way."""

    values: torch.Tensor
    ambiguous: torch.Tensor  # bool, same shape


class QuantizedActivation(NamedTuple):
    """A per-token quantized activation ``[tokens, features]`` with its ``[tokens, 1]``
    parameters (float64 scale, float64 zero point or None) and ambiguity masks."""

    values: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    ambiguous: torch.Tensor  # [tokens, features]: the element may be one step off
    token_ambiguous: torch.Tensor  # [tokens, 1]: the zero point may be one step off

    def dequantized(self) -> torch.Tensor:
        values = self.values.double()
        if self.zero_point is not None:
            values = values - self.zero_point
        return values * self.scale


class LinearOracle(NamedTuple):
    """The exact output of an int8 linear (float64) and how far a correct float32 kernel may be
    from it: ``slack`` (one step of each ambiguous rounding) plus ``FLOAT32_RTOL`` times
    ``magnitude`` (the size of the terms a kernel sums, its float32 rounding scale)."""

    value: torch.Tensor
    slack: torch.Tensor
    magnitude: torch.Tensor

    def tolerance(self, rtol: float = FLOAT32_RTOL) -> torch.Tensor:
        return self.slack + rtol * self.magnitude


def slices(tensor: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``tensor`` as float64 ``[slices, elements]``: one row per slice along ``axis``, or a
    single row for the whole tensor (``axis=None``)."""
    t = tensor.detach().to(torch.float64)
    if axis is None or t.dim() == 0:
        return t.reshape(1, -1)
    return t.movedim(axis, 0).reshape(t.shape[axis], -1)


def _per_element(values: torch.Tensor, like: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Per-slice values broadcast against ``like`` (a scalar for ``axis=None``)."""
    if axis is None or like.dim() == 0:
        return values.reshape(())
    shape = [1] * like.dim()
    shape[axis] = -1
    return values.reshape(shape)


def _range_params(
    low: torch.Tensor, high: torch.Tensor, qmin: int, qmax: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric scale, zero point (float64) and whether the zero point is ambiguous, for the
    range [low, high] widened to include 0."""
    low, high = low.clamp(max=0), high.clamp(min=0)
    scale = ((high - low) / (qmax - qmin)).clamp(min=F32_TINY)
    exact = low / scale
    zero_point = (qmin - torch.round(exact)).clamp(qmin, qmax)
    return scale, zero_point, _near_tie(exact)


def _near_tie(exact: torch.Tensor) -> torch.Tensor:
    return ((exact - exact.floor()) - 0.5).abs() < TIE_WINDOW


def weight_qparams(
    weight: torch.Tensor, *, symmetric: bool, axis: int | None = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale (float64) and zero point (int64, None when symmetric) of an int8 weight: one per
    slice along ``axis`` (per channel), or a 0-d one for the whole tensor (``axis=None``)."""
    rows = slices(weight, axis)
    if rows.shape[1] == 0:
        rows = torch.zeros(rows.shape[0], 1, dtype=torch.float64)
    low, high = rows.amin(1), rows.amax(1)
    if symmetric:
        bound = torch.maximum(-low.clamp(max=0), high.clamp(min=0))
        scale = (bound / WEIGHT_QMAX).clamp(min=F32_TINY)
        return (scale.reshape(()) if axis is None else scale), None
    scale, zero_point, _ = _range_params(low, high, -128, 127)
    if axis is None:
        return scale.reshape(()), zero_point.reshape(()).long()
    return scale, zero_point.long()


def quantize_weight(
    weight: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    *,
    axis: int | None = 0,
) -> Quantized:
    """The int8 values of ``weight`` for the given parameters (from :func:`weight_qparams`, or
    the library's own, to check its integers independently of its scale)."""
    w = weight.detach().to(torch.float64)
    exact = w / _per_element(scale.to(torch.float64), w, axis)
    q = torch.round(exact)
    if zero_point is None:
        q = q.clamp(-WEIGHT_QMAX, WEIGHT_QMAX)
    else:
        q = (q + _per_element(zero_point.to(torch.float64), w, axis)).clamp(-128, 127)
    return Quantized(q.long(), _near_tie(exact))


def dequantize_weight(
    values: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    *,
    axis: int | None = 0,
) -> torch.Tensor:
    """float64 ``(q - zp) * scale``."""
    q = values.to(torch.float64)
    if zero_point is not None:
        q = q - _per_element(zero_point.to(torch.float64), q, axis)
    return q * _per_element(scale.to(torch.float64), q, axis)


def torch_quantize_weight(
    weight: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    *,
    axis: int | None = 0,
) -> torch.Tensor:
    """The same integers from torch's own ``quantize_per_channel`` / ``quantize_per_tensor``
    (qint8, [-128, 127]; deprecated, its warnings hidden here), as int8."""
    w = weight.detach().to(torch.float32)
    zeros = torch.zeros_like(scale, dtype=torch.long) if zero_point is None else zero_point.long()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if axis is None or w.dim() == 0:
            q = torch.quantize_per_tensor(w, float(scale), int(zeros), torch.qint8)
        else:
            q = torch.quantize_per_channel(
                w, scale.to(torch.float64).reshape(-1), zeros.reshape(-1), axis, torch.qint8
            )
        return q.int_repr()


def activation_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """``(qmin, qmax)`` of a ``bits``-wide activation; symmetric drops the most negative."""
    half = 1 << (bits - 1)
    return (-(half - 1) if symmetric else -half), half - 1


def quantize_activation(x: torch.Tensor, *, bits: int, symmetric: bool) -> QuantizedActivation:
    """Per-token quantization of ``x`` (any shape; tokens are the rows of ``x`` flattened to
    ``[tokens, features]``), ``bits`` wide. Finite inputs only."""
    rows = x.detach().to(torch.float64).reshape(-1, x.shape[-1] if x.dim() else 1)
    qmin, qmax = activation_range(bits, symmetric)
    if rows.shape[1] == 0:
        rows = rows.new_zeros(rows.shape[0], 1)
    if symmetric:
        bound = rows.abs().amax(1, keepdim=True).clamp(min=MIN_ACTIVATION_BOUND)
        scale = bound / qmax
        exact = rows / scale
        q = torch.round(exact).clamp(qmin, qmax)
        no_token = torch.zeros_like(scale, dtype=torch.bool)
        return QuantizedActivation(q.long(), scale, None, _near_tie(exact), no_token)
    low = rows.amin(1, keepdim=True)
    high = rows.amax(1, keepdim=True)
    scale, zero_point, token_ambiguous = _range_params(low, high, qmin, qmax)
    exact = rows / scale
    q = (torch.round(exact) + zero_point).clamp(qmin, qmax)
    return QuantizedActivation(q.long(), scale, zero_point, _near_tie(exact), token_ambiguous)


def int8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    bits: int,
    symmetric: bool,
    weight_zero_point: torch.Tensor | None = None,
) -> LinearOracle:
    """What an int8 dynamic linear must compute, from first principles: ``x`` quantized per
    token (``bits`` wide, symmetric or asymmetric), dequantized, times the dequantized weight
    (int8 ``[out, in]`` with per-output-channel or 0-d scales), plus bias, all in float64.

    ``value`` has ``x``'s leading shape and ``out`` features; compare a kernel's output with
    :func:`assert_linear_matches`."""
    out_features, in_features = weight.shape
    act = quantize_activation(x.reshape(-1, in_features), bits=bits, symmetric=symmetric)
    axis = None if weight_scale.numel() == 1 else 0
    w = dequantize_weight(
        weight,
        weight_scale.reshape(-1) if axis == 0 else weight_scale,
        weight_zero_point,
        axis=axis,
    )
    w_abs = w.abs()
    x_deq = act.dequantized()
    value = x_deq @ w.T
    magnitude = x_deq.abs() @ w_abs.T
    if not symmetric:  # kernels sum unsigned integers and subtract the zero point's term
        qmin, qmax = activation_range(bits, symmetric)
        magnitude = magnitude + (act.scale * (qmax - qmin)) * w_abs.sum(1)
    slack = (act.ambiguous.double() * act.scale) @ w_abs.T
    slack = slack + act.token_ambiguous.double() * act.scale * w_abs.sum(1)
    if bias is not None:
        b = bias.detach().to(torch.float64)
        value, magnitude = value + b, magnitude + b.abs()
    shape = (*x.shape[:-1], out_features)
    return LinearOracle(value.reshape(shape), slack.reshape(shape), magnitude.reshape(shape))


def linear_mismatch(got: torch.Tensor, oracle: LinearOracle, rtol: float = FLOAT32_RTOL) -> float:
    """How far ``got`` exceeds the oracle's tolerance: <= 0 when it matches (the largest
    ``|got - value| - tolerance``)."""
    assert got.shape == oracle.value.shape, (got.shape, oracle.value.shape)
    excess = (got.detach().to(torch.float64) - oracle.value).abs() - oracle.tolerance(rtol)
    return float(excess.max()) if excess.numel() else 0.0


def assert_linear_matches(
    got: torch.Tensor, oracle: LinearOracle, rtol: float = FLOAT32_RTOL, what: str = ""
) -> None:
    """Every output within the oracle's tolerance; the message names the worst element."""
    assert got.shape == oracle.value.shape, (what, got.shape, oracle.value.shape)
    error = (got.detach().to(torch.float64) - oracle.value).abs()
    excess = error - oracle.tolerance(rtol)
    if excess.numel() and float(excess.max()) > 0:
        worst = int(excess.argmax())
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), excess.shape))
        raise AssertionError(
            f"{what}: output {index} is {float(got.reshape(-1)[worst]):.9g}, the oracle says "
            f"{float(oracle.value.reshape(-1)[worst]):.9g} (error {float(error.reshape(-1)[worst]):.3g}"
            f", tolerance {float(oracle.tolerance(rtol).reshape(-1)[worst]):.3g})"
        )


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """``||got - expected|| / ||expected||`` in float64: the accuracy measure of the baselines."""
    g, e = got.detach().to(torch.float64), expected.detach().to(torch.float64)
    norm = float(e.norm())
    return float((g - e).norm()) / norm if norm else float(g.abs().max())


def reciprocal_rounding_row(features: int, bits: int = 8) -> torch.Tensor:
    """A float32 row whose asymmetric per-token quantization (``bits`` wide) tells the product
    ``x * (1 / scale)``, which quantcore rounds, from the quotient ``x / scale``: besides its
    range ends (-1 and a top picked so that float32 rounds ``1 / scale`` by almost half a unit)
    it holds values next to rounding boundaries where the two give different integers."""
    steps = (1 << bits) - 1
    tops = torch.linspace(1.0, 4.0, 3001)
    scales = tops / steps - (-1.0 / steps)
    misfit = (scales.reciprocal().double() * scales.double() - 1).abs()
    low, high = torch.tensor([-1.0]), tops[int(misfit.argmax())].reshape(1)
    scale = high / steps - low / steps  # as quantize_activation computes it
    boundaries = ((torch.arange(-steps, steps, dtype=torch.float64) + 0.5) * scale.double()).float()
    near = boundaries.view(torch.int32)[:, None] + torch.arange(-64, 65, dtype=torch.int32)
    values = near.view(torch.float32).flatten()
    values = values[(values > low) & (values < high)]
    telling = values[torch.round(values * scale.reciprocal()) != torch.round(values / scale)]
    assert telling.numel() >= 20, telling.numel()
    filler = telling.repeat(features // telling.numel() + 1)[: max(features - 2, 0)]
    return torch.cat([low, high, filler])[:features]
