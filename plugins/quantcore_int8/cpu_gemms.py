"""torch's int8 GEMM ops on x86 CPUs (oneDNN's and fbgemm's, no quantized dtypes kept): whether
they are there, thin calls into them, and what they compute exactly on this CPU.

The last decides the activation width every int8 backend uses, the reference included
(:func:`activation_bits`): without AVX512-VNNI (or AMX), x86 int8 GEMMs add pairs of u8 x s8
products in saturating int16, so 8-bit activations times 8-bit weights can overflow. A one-off
self-test tells whether this CPU computes 8-bit products exactly; if not, activations whose spec
leaves ``bits`` open use 7 bits (as torch.ao's ``reduce_range``). It lives here, apart from the
fast kernels, so the reference depends on no kernel of them.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch

from quantcore.plugin import ActivationSpec


def _op(namespace: str, name: str) -> Any:
    try:
        return getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return None


def onednn_available() -> bool:
    """Whether this torch build has oneDNN's int8 linear ops."""
    return (
        _op("onednn", "qlinear_prepack") is not None
        and _op("onednn", "qlinear_pointwise") is not None
    )


def fbgemm_available() -> bool:
    """Whether this torch build still has fbgemm's (deprecated) dynamic int8 linear ops."""
    engines = torch.backends.quantized.supported_engines
    return (
        _op("quantized", "linear_dynamic") is not None
        and _op("quantized", "linear_prepack") is not None
        and hasattr(torch, "_make_per_channel_quantized_tensor")
        and ("fbgemm" in engines or "x86" in engines)
    )


@functools.cache
def fbgemm_unpack_available() -> bool:
    """Whether fbgemm can give packed int8 weights back (what lets the plain copy go)."""
    return _op("quantized", "linear_unpack") is not None


def fbgemm_and_onednn_available() -> bool:
    return fbgemm_available() and onednn_available()


def onednn_prepack(wq: torch.Tensor) -> torch.Tensor:
    return torch.ops.onednn.qlinear_prepack(wq, None)  # type: ignore[no-any-return]


def onednn_gemm(
    xu8: torch.Tensor,
    zero_point: int,
    packed: torch.Tensor,
    scales: torch.Tensor,
    weight_zeros: torch.Tensor | None = None,
) -> torch.Tensor:
    """sum_k (xu8 - zero_point) * w * scale[n], in float32."""
    if weight_zeros is None:
        weight_zeros = torch.zeros(scales.shape[0], dtype=torch.long)
    out: torch.Tensor = torch.ops.onednn.qlinear_pointwise(
        xu8,
        1.0,
        zero_point,
        packed,
        scales,
        weight_zeros,
        None,
        1.0,
        0,
        torch.float32,
        "none",
        [],
        "",
    )
    return out


def fbgemm_pack(wq: torch.Tensor, scales: torch.Tensor) -> Any:
    """fbgemm's packed weight (per-channel scales folded into its output stage). Packing needs a
    quantized tensor: it exists only for this call, with its deprecation warnings hidden."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zeros = torch.zeros(wq.shape[0], dtype=torch.long)
        qweight = torch._make_per_channel_quantized_tensor(wq, scales.double(), zeros, 0)
        return torch.ops.quantized.linear_prepack(qweight, None)


def fbgemm_linear(x: torch.Tensor, packed: Any, reduce_range: bool) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out: torch.Tensor = torch.ops.quantized.linear_dynamic(x, packed, reduce_range)
    return out


SPARE_ROWS = 2  # rows after the input that pin the fbgemm kernel's min and max


def fbgemm_gemm(q: torch.Tensor, zero_point: int, packed: Any) -> torch.Tensor:
    """sum_k q * w * scale[n] (exact integer sums) for ``q`` holding integer values in
    [-zero_point, 255 - zero_point]; its last ``SPARE_ROWS`` rows are overwritten here."""
    # A token with NaN or Inf has a non-finite scale, so its output row is NaN/Inf whatever its
    # integers are; fbgemm refuses NaN in its min/max, so those values go in as zeros.
    q.nan_to_num_(0.0)
    q[-SPARE_ROWS:].zero_()
    q[-2, 0] = -zero_point
    q[-1, 0] = 255 - zero_point
    return fbgemm_linear(q, packed, False)[:-SPARE_ROWS]


@functools.cache
def onednn_int8_exact() -> bool:
    """Whether oneDNN computes 8-bit x 8-bit products exactly on this CPU (VNNI/AMX) rather
    than saturating pair sums at int16 (AVX2, AVX512 without VNNI)."""
    if not onednn_available():
        return False
    k = 64
    try:
        packed = onednn_prepack(torch.full((4, k), 127, dtype=torch.int8))
        y = onednn_gemm(torch.full((2, k), 255, dtype=torch.uint8), 0, packed, torch.ones(4))
    except RuntimeError:
        return False
    return float(y[0, 0]) == 255 * 127 * k


@functools.cache
def fbgemm_int8_exact() -> bool:
    """The same self-test for fbgemm."""
    if not fbgemm_available():
        return False
    k = 64
    wq = torch.full((4, k), 127, dtype=torch.int8)
    try:
        q = torch.full((2 + SPARE_ROWS, k), 127.0)
        y = fbgemm_gemm(q, 128, fbgemm_pack(wq, torch.ones(4)))
    except RuntimeError:
        return False
    return float(y[0, 0]) == 127 * 127 * k


def cpu_int8_exact() -> bool:
    """Whether this CPU's int8 GEMMs take 8-bit activations exactly (no GEMM: nothing saturates)."""
    if onednn_available():
        return onednn_int8_exact()
    if fbgemm_available():
        return fbgemm_int8_exact()
    return True


def activation_bits(spec: ActivationSpec, device: torch.device) -> int:
    """The activation width layers with ``spec`` use on ``device``: the spec's own, else 8, or 7
    on CPUs whose int8 GEMMs would saturate at 8. Every int8 backend, the reference included,
    uses this, so they agree on the math."""
    if spec.bits is not None:
        return spec.bits
    if device.type != "cpu":
        return 8
    return 8 if cpu_int8_exact() else 7
