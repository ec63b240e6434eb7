"""Native int8 kernels for x86 CPUs: each layer call is one C++ op (``csrc/``).

The op quantizes the activations per token exactly as ``quantize_activation`` does (same float32
operations, round half to even), runs fbgemm's u8 x s8 GEMM with int32 sums, and applies the
per-token scale, the zero-point term and the bias in one pass over the output. So it computes what
the reference computes, up to float summation order, for every token count; no Python runs per
token, and nothing but the op runs per call.

Recurrent layers (LSTM/GRU/RNN) whose linear pieces all run this kernel get one more op: the whole
sequence (every layer, direction and time step) in native code.

The packed weights are C++ objects (``quantcore_int8._native.PackedLinear``), made on the first
call and never pickled; they give the exact int8 weight back, so the layer can drop its plain copy
(quantcore.PackedWeightKernel). Calls go to the extension through pybind11, about a microsecond;
under ``torch.compile`` a call enters the graph as one opaque op (quantcore.call_in_graph) that
runs the eager call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from quantcore import KernelRequest, QuantizedWeight, call_in_graph, graph_handle
from quantcore_int8 import native
from quantcore_int8.kernels_cpu import activation_bits, channel_scales, supports_per_token
from quantcore_int8.quantization import dequantize_weight, fake_quantize_activation

if TYPE_CHECKING:
    from quantcore_int8 import _native


@functools.cache
def native_int8_exact() -> bool:
    """Whether the native GEMM takes 8-bit activations exactly on this CPU: without VNNI, x86
    int8 GEMMs add pairs of u8 x s8 products in saturating int16."""
    if not native.available():
        return False
    extension = native.extension()
    k = 64
    weight = torch.full((4, k), 127, dtype=torch.int8)
    packed = extension.PackedLinear(weight, torch.ones(4), 8, False)
    # every input 1.0: scale 1/255, each token quantizes to 255 (the largest u8)
    y = extension.linear(torch.ones(2, k), packed, None)
    return abs(float(y[0, 0]) - 127 * k) < 1e-3 * 127 * k


def supports_native(request: KernelRequest) -> bool:
    return supports_per_token(request, native_int8_exact)


class NativeInt8Linear:
    """One layer's prepared native int8 linear."""

    def __init__(self, request: KernelRequest) -> None:
        assert request.activation is not None
        scales = channel_scales(request.weight)
        assert scales is not None
        self.wq: torch.Tensor | None = request.weight.data.contiguous()  # until release
        self.out_features, self.in_features = self.wq.shape
        self.weight_scale, self.weight_spec = request.weight.scale, request.weight.spec
        self.scales = scales
        self.bias = None if request.bias is None else request.bias.detach().to(torch.float32)
        self.activation = request.activation
        self.bits = activation_bits(request.activation, request.device)
        self.packed: _native.PackedLinear | None = None
        self.after_graph_call: Callable[[], None] | None = None
        self.graph_handle = graph_handle(self, (self.out_features,))
        self._extension = native.extension()
        self._linear: Callable[..., torch.Tensor] = self._extension.linear

    def pack(self) -> _native.PackedLinear:
        """The C++ packed weight (made once, on first use)."""
        if self.packed is None:
            self.packed = self._extension.PackedLinear(
                self._plain_int8(), self.scales, self.bits, self.activation.symmetric
            )
        return self.packed

    def _plain_int8(self) -> torch.Tensor:
        if self.wq is not None:
            return self.wq
        assert self.packed is not None
        return self.packed.unpack()

    def release_plain_weight(self) -> bool:
        if self.packed is None:
            return False
        self.wq = None
        return True

    def plain_weight(self) -> QuantizedWeight:
        return QuantizedWeight(
            "int8", self._plain_int8(), scale=self.weight_scale, spec=self.weight_spec
        )

    def _differentiable(self, x: torch.Tensor) -> torch.Tensor:
        """The reference's math in differentiable ops: the native op has no autograd."""
        x_q = fake_quantize_activation(x, self.activation, self.bits)
        return F.linear(x_q, dequantize_weight(self.plain_weight()), self.bias).to(x.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            return self._differentiable(x)
        if torch.compiler.is_compiling():
            return call_in_graph(self.graph_handle, x)
        packed = self.packed if self.packed is not None else self.pack()
        if x.dtype == torch.float32:
            return self._linear(x, packed, self.bias)
        return self._linear(x.to(torch.float32), packed, self.bias).to(x.dtype)


def prepare_native_linear(request: KernelRequest) -> Callable[[torch.Tensor], torch.Tensor]:
    return NativeInt8Linear(request)


# ------------------------------------------------------------------------------- recurrent


def supports_native_recurrent(request: KernelRequest) -> bool:
    """Every linear piece of the layer runs the native linear kernel (so the whole sequence can
    run on their packed weights), and the activations are quantized per token."""
    cells = request.options.get("cells", ())
    kernels = [k for cell in cells for k in cell if k is not None]
    return (
        request.device.type == "cpu"
        and request.options.get("mode") in ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")
        and bool(kernels)
        and all(isinstance(k, NativeInt8Linear) for k in kernels)
    )


class NativeRecurrent:
    """A whole LSTM/GRU/RNN in one native call, over its linear pieces' packed weights.

    Called as ``kernel(x, h0, c0, lengths)`` with ``x`` [steps, batch, features], ``h0``
    [layers * directions, batch, out], ``c0`` the LSTM cell state (else empty) and ``lengths``
    the valid steps per batch element of a padded sequence (or None); returns
    ``(output, h_n, c_n)``.
    """

    def __init__(self, request: KernelRequest) -> None:
        options = request.options
        self.mode: str = options["mode"]
        self.hidden_size: int = options["hidden_size"]
        self.num_layers: int = options["num_layers"]
        self.bidirectional: bool = options["bidirectional"]
        self.cells: tuple[tuple[NativeInt8Linear, NativeInt8Linear, NativeInt8Linear | None], ...]
        self.cells = options["cells"]
        self.packed: _native.PackedRecurrent | None = None  # built on the first call

    def _build(self) -> _native.PackedRecurrent:
        packed: _native.PackedRecurrent = native.extension().PackedRecurrent(
            self.mode, self.hidden_size, self.num_layers, self.bidirectional
        )
        for ih, hh, hr in self.cells:
            packed.add_cell(ih.pack(), hh.pack(), ih.bias, hh.bias)
            if hr is not None:
                packed.add_projection(hr.pack())
        return packed

    def __call__(
        self,
        x: torch.Tensor,
        h0: torch.Tensor,
        c0: torch.Tensor,
        lengths: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        packed = self.packed if self.packed is not None else self._build()
        self.packed = packed
        no_lengths = x.new_empty(0, dtype=torch.long)
        output, h_n, c_n = packed.forward(
            x.to(torch.float32),
            h0,
            c0,
            no_lengths if lengths is None else lengths,
        )
        return output.to(x.dtype), h_n.to(h0.dtype), c_n.to(c0.dtype)


def prepare_native_recurrent(request: KernelRequest) -> NativeRecurrent:
    return NativeRecurrent(request)
