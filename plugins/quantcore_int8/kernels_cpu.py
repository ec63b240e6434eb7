"""Fast int8 linear kernels for x86 CPUs, on torch's own int8 GEMMs (no quantized dtypes).

Both kernels compute exactly what the reference computes: per-token activations (symmetric,
or asymmetric with a zero point per token), rounded as ``quantize_activation`` rounds them,
times the stored int8 weights, accumulated in int32, then scaled per token and per output
channel. The activations are handed to the GEMM as unsigned integers with scale 1, because the
u8 x s8 form is the fast one. One exception, for speed where it matters most (decoding): a
single asymmetric token goes to fbgemm raw, and fbgemm's own rounding of its scale and zero
point may move some integers by one step.

Width of the activations: the one every int8 backend uses (``cpu_gemms.activation_bits``: 8
bits, or 7 on CPUs whose int8 GEMMs saturate), so the fast path stays exact.

* oneDNN (``torch.ops.onednn.qlinear_prepack`` / ``qlinear_pointwise``): no deprecation, the
  default for many tokens. Inductor cannot lower it outside its own freezing flow, so under
  ``torch.compile`` it is an opaque custom op (``quantcore_int8::onednn_linear``), its weight
  packed while tracing if no eager call packed it first.
* fbgemm (``torch.ops.quantized.linear_dynamic``, weights packed from a transient quantized
  tensor): deprecated, so an optional backend with its warnings hidden; faster for a few tokens
  (decoding). The op quantizes its input per tensor from the input's min/max, so two extra rows
  pinning min and max make its scale exactly 1 and its zero point ours: the already-rounded
  values pass through unchanged. For one token, per tensor is per token, so the raw token goes
  in (one call instead of about thirty small ops around it). Its packed weight is no tensor, so
  under ``torch.compile`` a call that fbgemm serves enters the graph whole, as one opaque op
  (``quantcore.call_in_graph`` with the kernel's graph handle) that runs the eager path.
  (Sending those calls to oneDNN instead would cost more: its GEMM took 1.5-2.5x fbgemm's time
  at 1-8 tokens here.)

Weights are packed lazily on the first call: quantizing a model (or loading one to save it
again) never pays for packing, and the packed copy is never pickled.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from quantcore.plugin import (
    Granularity,
    KernelRequest,
    QuantizedWeight,
    call_in_graph,
    graph_handle,
)
from quantcore_int8 import cpu_gemms
from quantcore_int8.quantization import (
    MIN_ACTIVATION_BOUND,
    activation_range,
    dequantize_weight,
    fake_quantize_activation,
)

# Calls with at most this many tokens run fbgemm in the combined backend (memory-bound GEMMs,
# where fbgemm's lower overhead wins); more tokens run oneDNN.
FBGEMM_MAX_TOKENS = 64
_TINY = torch.finfo(torch.float32).tiny

Linear = Callable[[torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------ the GEMM under compile


@torch.library.custom_op("quantcore_int8::onednn_linear", mutates_args=())
def _onednn_linear_op(
    xu8: torch.Tensor,
    zero_point: int,
    packed: torch.Tensor,
    scales: torch.Tensor,
    weight_zeros: torch.Tensor,
) -> torch.Tensor:
    """oneDNN's GEMM as one opaque op that torch.compile keeps in its graph (no graph break):
    inductor has no lowering for the packed weight outside its own freezing flow."""
    return cpu_gemms.onednn_gemm(xu8, zero_point, packed, scales, weight_zeros)


@_onednn_linear_op.register_fake
def _onednn_linear_fake(
    xu8: torch.Tensor,
    zero_point: int,
    packed: torch.Tensor,
    scales: torch.Tensor,
    weight_zeros: torch.Tensor,
) -> torch.Tensor:
    return xu8.new_empty((xu8.shape[0], scales.shape[0]), dtype=torch.float32)


# torch's ChooseQuantizationParams raises smaller scales to this; tokens whose range would need
# one take the exact path instead of the single-token shortcut (with a factor 2 of margin).
_FBGEMM_MIN_SCALE = 6.1e-5


# ------------------------------------------------------------------------------- support


def channel_scales(weight: QuantizedWeight) -> torch.Tensor | None:
    """Per-output-channel float32 scales [N], or None when the layout is not one we run."""
    scale, data, spec = weight.scale, weight.data, weight.spec
    if scale is None or weight.zero_point is not None or data.dim() != 2:
        return None
    if data.dtype != torch.int8 or (spec is not None and spec.axis % 2 != 0):
        return None
    if scale.numel() == 1:
        return scale.reshape(1).expand(data.shape[0]).to(torch.float32).contiguous()
    if scale.numel() != data.shape[0]:
        return None
    return scale.reshape(-1).to(torch.float32).contiguous()


def supports_per_token(request: KernelRequest, exact8: Callable[[], bool]) -> bool:
    """Per-token int8 activations times per-channel symmetric int8 weights on the CPU, at a width
    the GEMM computes exactly (``exact8``: whether it takes 8 bits)."""
    act = request.activation
    if request.device.type != "cpu" or act is None or request.weight.format != "int8":
        return False
    if act.granularity is not Granularity.PER_TOKEN:
        return False
    if channel_scales(request.weight) is None:
        return False
    bits = cpu_gemms.activation_bits(act, request.device)
    return 2 <= bits <= 7 or (bits == 8 and exact8())


def supports_onednn(request: KernelRequest) -> bool:
    return supports_per_token(request, cpu_gemms.onednn_int8_exact)


def supports_fbgemm(request: KernelRequest) -> bool:
    return supports_per_token(request, cpu_gemms.fbgemm_int8_exact)


def supports_fbgemm_onednn(request: KernelRequest) -> bool:
    return supports_fbgemm(request) and supports_onednn(request)


# ------------------------------------------------------------------------------- kernels


def _to_uint8(values: torch.Tensor, high: int) -> torch.Tensor:
    """Integer-valued floats in [0, high] as uint8. torch converts float to uint8 element by
    element, several times slower than to int8 or int32, whose bits are the same here. Inductor
    converts to uint8 in vector code, while its int8-to-uint8 view goes through a scalar loop."""
    if torch.compiler.is_compiling():
        return values.to(torch.uint8)
    if high <= 127:
        return values.to(torch.int8).view(torch.uint8)
    return values.to(torch.int32).to(torch.uint8)


def _row_sums(wq: torch.Tensor) -> torch.Tensor:
    """int32 row sums of an int8 weight, a block of rows at a time: ``sum(dtype=int32)`` converts
    its whole input first, a temporary as large as the float weight (a layer quantized while
    transformers loads it would briefly need twice the float layer)."""
    step = max(1, (1 << 20) // max(1, wq.shape[1]))
    return torch.cat([rows.sum(1, dtype=torch.int32) for rows in torch.split(wq, step)])


class _Int8Linear:
    """One layer's prepared int8 linear: plain tensors, packed weights made on first use."""

    def __init__(self, request: KernelRequest, fbgemm_up_to: int) -> None:
        assert request.activation is not None
        scales = channel_scales(request.weight)
        assert scales is not None
        # the plain int8 weight: dropped once fbgemm's packed copy exists (release_plain_weight)
        self.wq: torch.Tensor | None = request.weight.data.contiguous()
        self.out_features, self.in_features = self.wq.shape
        self.weight_scale, self.weight_spec = request.weight.scale, request.weight.spec
        self.scales = scales
        self.bias = None if request.bias is None else request.bias.detach().to(torch.float32)
        bits = cpu_gemms.activation_bits(request.activation, request.device)
        self.symmetric = request.activation.symmetric
        self.qmin, self.qmax = activation_range(bits, self.symmetric)
        self.zero_point = self.qmax + 1  # uint8 values q + zp lie in [1, 2 * qmax + 1]
        self.uint8_max = max(2 * self.qmax + 1, self.qmax - self.qmin)  # largest GEMM input
        # asymmetric tokens: sum_k (q - zp_t) w = sum_k u w - (zp_t - qmin) sum_k w, u = q - qmin
        self.weight_sums = (_row_sums(self.wq).to(torch.float32) * scales)[None]
        self.weight_zeros = torch.zeros(self.out_features, dtype=torch.long)  # oneDNN's argument
        self.fbgemm_up_to = fbgemm_up_to
        # One token, asymmetric, 7 or 8 bits: fbgemm's own per-tensor quantization of that token
        # is per-token quantization (reduce_range: 7 bits), in one fused call.
        self.fbgemm_single_token = (not self.symmetric) and bits in (7, 8) and fbgemm_up_to > 0
        self.min_single_token_span = 2 * _FBGEMM_MIN_SCALE * (self.qmax - self.qmin)
        self.packed: dict[str, Any] = {}
        self.activation, self.bits = request.activation, bits
        self.after_graph_call: Callable[[], None] | None = None
        self.graph_handle = graph_handle(self, (self.out_features,))

    def _plain_int8(self) -> torch.Tensor:
        if self.wq is not None:
            return self.wq
        with warnings.catch_warnings():  # a transient quantized tensor, as for packing
            warnings.simplefilter("ignore")
            qweight, _ = torch.ops.quantized.linear_unpack(self.packed["fbgemm"])
            return qweight.int_repr()  # type: ignore[no-any-return]

    def _packed(self, kind: str) -> Any:
        packed = self.packed.get(kind)
        if packed is None:
            if kind == "onednn":
                packed = cpu_gemms.onednn_prepack(self._plain_int8())
            else:
                packed = cpu_gemms.fbgemm_pack(self._plain_int8(), self.scales)
            self.packed[kind] = packed
        return packed

    def release_plain_weight(self) -> bool:
        """fbgemm's packed weight gives the exact int8 values back (oneDNN's does not): once it
        exists, the plain copy is not needed (quantcore.plugin.PackedWeightKernel)."""
        if "fbgemm" not in self.packed or not cpu_gemms.fbgemm_unpack_available():
            return False
        self.wq = None
        return True

    def plain_weight(self) -> QuantizedWeight:
        return QuantizedWeight(
            "int8", self._plain_int8(), scale=self.weight_scale, spec=self.weight_spec
        )

    def _onednn(self, q: torch.Tensor, zero_point: int) -> torch.Tensor:
        xu8 = _to_uint8(q.add_(zero_point) if zero_point else q, self.uint8_max)
        if not torch.compiler.is_compiling():
            return cpu_gemms.onednn_gemm(
                xu8, zero_point, self._packed("onednn"), self.scales, self.weight_zeros
            )
        # Traced: the GEMM is one op of the graph, so the quantization around it fuses across
        # layers without a break. Its packed weight must exist now, as a graph input: a model
        # compiled before its first call gets it packed here, while tracing.
        _pack_while_tracing(self, "onednn")
        out: torch.Tensor = torch.ops.quantcore_int8.onednn_linear(
            xu8, zero_point, self.packed["onednn"], self.scales, self.weight_zeros
        )
        return out

    def _fbgemm(self, q: torch.Tensor, zero_point: int) -> torch.Tensor:
        return cpu_gemms.fbgemm_gemm(q, zero_point, self._packed("fbgemm"))

    def _single_token_fits(self, x: torch.Tensor) -> bool:
        """A finite token whose range fbgemm quantizes as the reference would (non-finite and
        near-constant tokens take the exact path, which gives the reference's NaN/Inf rows)."""
        low, high = torch.aminmax(x)  # the cheapest whole-tensor range (vector_norm: 3x slower)
        span = max(float(high), 0.0) - min(float(low), 0.0)
        return math.isfinite(span) and span >= self.min_single_token_span

    def _single_token(self, x: torch.Tensor) -> torch.Tensor | None:
        """fbgemm quantizes the token itself: the same per-token asymmetric scheme, but its
        scale and zero point are rounded its own way (double-precision range, zero point from
        the nearer end, scales below 6.1e-5 raised to it, x * (1 / scale)), so some integers can
        differ by one step from the reference's (outputs within 2e-3 relative, tested). None
        for a token that must take the exact path."""
        # no reshapes or no-op casts: each dispatched op shows at this size
        x32 = x if x.dtype == torch.float32 else x.to(torch.float32)
        if not self._single_token_fits(x32):
            return None
        y = cpu_gemms.fbgemm_linear(x32, self._packed("fbgemm"), self.bits == 7)
        y = y if self.bias is None else y.add_(self.bias)
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def _fbgemm_serves(self, tokens: int) -> bool:
        return tokens <= self.fbgemm_up_to

    def _input_buffer(self, tokens: int) -> torch.Tensor | None:
        """Where the rounded activations go: fbgemm's input with its spare rows, or a new
        tensor (None) for oneDNN."""
        if self._fbgemm_serves(tokens):
            return torch.empty(tokens + cpu_gemms.SPARE_ROWS, self.in_features)
        return None

    def _gemm(
        self, values: torch.Tensor, buffer: torch.Tensor | None, zero_point: int
    ) -> torch.Tensor:
        """sum_k (values - zero_point) * w * scale[n] for integer-valued float32 ``values``
        (written into ``buffer`` when it is fbgemm's)."""
        if buffer is not None:
            return self._fbgemm(buffer, zero_point)
        return self._onednn(values, zero_point)

    def _asymmetric(self, x2: torch.Tensor) -> torch.Tensor:
        """Per-token asymmetric activations: the reference's arithmetic (quantize_activation),
        written for the GEMM's unsigned input, u = q - qmin in [0, 2**bits - 1]."""
        steps = self.qmax - self.qmin
        # two reductions: torch.aminmax over rows is several times slower than amin + amax
        low = x2.amin(1, keepdim=True).clamp_max_(0)
        high = x2.amax(1, keepdim=True).clamp_min_(0)
        token_scale = (high / steps).sub_(low / steps).clamp_min_(_TINY)
        # the zero point on the unsigned scale: clamp(qmin - round(low / s), qmin, qmax) - qmin
        unsigned_zero = torch.round(low.div_(token_scale)).neg_().clamp_(0, steps)
        buffer = self._input_buffer(x2.shape[0])
        out = None if buffer is None else buffer[: x2.shape[0]]
        unsigned = torch.mul(x2, token_scale.reciprocal(), out=out).round_().add_(unsigned_zero)
        y = self._gemm(unsigned.clamp_(0, steps), buffer, 0).mul_(token_scale)
        y.addcmul_(token_scale.mul_(unsigned_zero), self.weight_sums, value=-1)
        return y if self.bias is None else y.add_(self.bias)

    def _differentiable(self, x: torch.Tensor) -> torch.Tensor:
        """The reference's math in differentiable ops: the int8 GEMMs have no autograd."""
        assert self.activation is not None
        x_q = fake_quantize_activation(x, self.activation, self.bits)
        return F.linear(x_q, dequantize_weight(self.plain_weight()), self.bias).to(x.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise RuntimeError(
                f"input has {x.shape[-1]} features, the layer expects {self.in_features}"
            )
        if x.requires_grad and torch.is_grad_enabled():
            return self._differentiable(x)
        if torch.compiler.is_compiling() and self._fbgemm_serves(x.numel() // self.in_features):
            # fbgemm will serve it: its packed weight cannot enter a graph, so the whole call
            # does, as one opaque op that runs this method eagerly
            return call_in_graph(self.graph_handle, x)
        if self.fbgemm_single_token and x.numel() == self.in_features and x.dim() >= 2:
            # decode: fbgemm takes the token as it comes ([..., 1, in_features], any strides)
            y1: torch.Tensor | None = self._single_token(x)
            if y1 is not None:
                return y1
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(torch.float32)
        tokens = x2.shape[0]
        if tokens == 0:
            return x.new_zeros((*lead, self.out_features))
        if not self.symmetric:
            return self._asymmetric(x2).reshape(*lead, self.out_features).to(x.dtype)
        bound = x2.abs().amax(1, keepdim=True).clamp_min_(MIN_ACTIVATION_BOUND)
        buffer = self._input_buffer(tokens)
        out = None if buffer is None else buffer[:tokens]
        q = torch.mul(x2, self.qmax / bound, out=out).round_()
        y = self._gemm(q, buffer, self.zero_point)
        token_scale = bound.div_(self.qmax)
        y = y.mul_(token_scale) if self.bias is None else torch.addcmul(self.bias, y, token_scale)
        return y.reshape(*lead, self.out_features).to(x.dtype)


@torch.compiler.assume_constant_result  # type: ignore[untyped-decorator]
def _pack_while_tracing(kernel: _Int8Linear, kind: str) -> bool:
    """Run (not traced) by dynamo while it traces: packing is a one-off side effect, not a step of
    the graph."""
    kernel._packed(kind)
    return True


def prepare_onednn_linear(request: KernelRequest) -> Linear:
    return _Int8Linear(request, fbgemm_up_to=0)


def prepare_fbgemm_linear(request: KernelRequest) -> Linear:
    return _Int8Linear(request, fbgemm_up_to=2**62)


def prepare_fbgemm_onednn_linear(request: KernelRequest) -> Linear:
    return _Int8Linear(request, fbgemm_up_to=FBGEMM_MAX_TOKENS)
