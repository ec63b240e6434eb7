"""quantcore_native: the compiled CPU kernels the first-party int8 and fp16 plugins run on.

A C++ extension (``quantcore_native._C``, built from ``native/csrc`` at install time against the
installed torch) around fbgemm's GEMMs: an int8 linear that quantizes its activations per token,
a float16-weight linear, and whole LSTM/GRU/RNN sequences over either. It is optional: where it
is not built, does not load, or is switched off (``QUANTCORE_DISABLE_NATIVE=1``), the plugins'
pure-torch kernels run, and :func:`unavailable_reason` says why. Their vector code (AVX512,
AVX2 or scalar) is chosen for the CPU at run time; ``QUANTCORE_NATIVE_MAX_ISA=avx2`` or ``=scalar``
caps it, which runs the narrower paths on a wider CPU (tests, benchmarks); :func:`vector_isa`
says which runs.

This package is a kernel library, not a plugin: it registers nothing. It gives plugins
:class:`LinearKernel` (what a packed native linear layer shares across weight formats) and
:class:`RecurrentKernel` (a whole recurrent layer over such kernels).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from quantcore.plugin import (
    FUSABLE_ACTIVATIONS,
    KernelRequest,
    QuantizedWeight,
    call_in_graph,
    graph_handle,
    kernel_of_handle,
)

if TYPE_CHECKING:
    from quantcore_native import _C

__all__ = [
    "ACTIVATION_CODES",
    "DISABLE_VARIABLE",
    "MAX_ISA_VARIABLE",
    "EmbeddingBagKernel",
    "EmbeddingKernel",
    "LinearKernel",
    "RecurrentKernel",
    "available",
    "extension",
    "supports_recurrent",
    "supports_table",
    "unavailable_reason",
    "vector_isa",
]

_log = logging.getLogger("quantcore")

# The activations the native linear applies in its epilogue (the extension's codes): a backend
# over LinearKernel lists them as its KernelBackend.fused_activations.
ACTIVATION_CODES: Mapping[str, int] = {"relu": 1, "gelu": 2, "gelu_tanh": 3, "silu": 4}

# Set to 1 to run without the native kernels (the pure-torch ones take over), e.g. to compare them.
DISABLE_VARIABLE = "QUANTCORE_DISABLE_NATIVE"
# Set to avx2 or scalar to cap the vector code the kernels choose (read once, at the first call).
MAX_ISA_VARIABLE = "QUANTCORE_NATIVE_MAX_ISA"
MAX_ISA_VALUES = ("avx2", "scalar")
_REBUILD = (
    "reinstall quantcore into an environment that has torch and a C++ compiler with "
    "`pip install --no-build-isolation quantcore` (or run `make demo` in a clone)"
)


@functools.cache
def unavailable_reason() -> str | None:
    """None when the native kernels can run here, else why not (logged once)."""
    reason = _check()
    if reason is not None:
        _log.info("quantcore: native CPU kernels are off: %s", reason)
    cap = os.environ.get(MAX_ISA_VARIABLE, "")
    if cap and cap not in MAX_ISA_VALUES:
        _log.warning(
            "quantcore: %s=%r is ignored; set it to one of %s",
            MAX_ISA_VARIABLE,
            cap,
            ", ".join(MAX_ISA_VALUES),
        )
    return reason


def _check() -> str | None:
    if os.environ.get(DISABLE_VARIABLE, "") not in ("", "0"):
        return f"{DISABLE_VARIABLE} is set"
    try:
        module = importlib.import_module("quantcore_native._C")
    except ImportError as error:
        return f"the extension is not built or does not load ({error}); {_REBUILD}"
    built: str = module.torch_version()
    running = torch.__version__.split("+")[0]
    if built != running:
        return f"the extension was built against torch {built}, this is torch {running}; {_REBUILD}"
    if not module.cpu_supported():
        return "fbgemm does not support this CPU"
    return None


def available() -> bool:
    return unavailable_reason() is None


def vector_isa() -> str | None:
    """The vector code the native kernels run here (avx512, avx2 or scalar); None where they
    do not run."""
    if not available():
        return None
    name: str = extension().vector_isa()
    return name


def extension() -> Any:
    """The compiled module (typed in ``_C.pyi``); call it only where :func:`available`."""
    return importlib.import_module("quantcore_native._C")


class LinearKernel:
    """A prepared linear layer on a native packed weight, whatever the weight's format.

    The packed copy is made on the first call (quantizing a model never pays for packing) and
    gives the exact plain weight back, so once it exists the layer may drop its own plain copy
    (quantcore.plugin.PackedWeightKernel). A call is one native op; an input that needs gradients takes
    the subclass's differentiable reference math instead, and under ``torch.compile`` the call
    enters the graph as one opaque op (quantcore.plugin.call_in_graph) running the eager call.
    """

    def __init__(self, request: KernelRequest) -> None:
        weight = request.weight  # its data is held as ``plain``, and only until released
        self.weight_format, self.weight_spec = weight.format, weight.spec
        self.weight_scale, self.weight_zero_point = weight.scale, weight.zero_point
        self.plain: torch.Tensor | None = weight.data.contiguous()
        self.out_features, self.in_features = self.plain.shape
        self.bias = None if request.bias is None else request.bias.detach().to(torch.float32)
        self.packed: _C.NativeLinear | None = None
        self.after_graph_call: Callable[[], None] | None = None
        self.graph_handle = graph_handle(self, (self.out_features,))
        # stands for the plain weight in a graph that reads it after its release
        self.plain_handle = graph_handle(self, tuple(self.plain.shape), self.plain.dtype)
        self.native = extension()
        self._linear: Callable[..., torch.Tensor] = self.native.linear
        fused = request.options.get("fused_activation")
        self.activation_code = 0 if fused is None else ACTIVATION_CODES[fused]
        self.activation_after = None if fused is None else FUSABLE_ACTIVATIONS[fused]

    def make_packed(self, plain: torch.Tensor) -> _C.NativeLinear:
        raise NotImplementedError

    def unpack(self, packed: _C.NativeLinear) -> torch.Tensor:
        raise NotImplementedError

    def differentiable(self, x: torch.Tensor) -> torch.Tensor:
        """The reference math in differentiable torch ops (the native op has no autograd)."""
        raise NotImplementedError

    def call_in_torch(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`differentiable`, then the fused activation if the request has one."""
        out = self.differentiable(x)
        return out if self.activation_after is None else self.activation_after(out)

    def pack(self) -> _C.NativeLinear:
        if self.packed is None:
            self.packed = self.make_packed(self.plain_data())
        return self.packed

    def plain_data(self) -> torch.Tensor:
        if self.plain is not None:
            return self.plain
        assert self.packed is not None
        if torch.compiler.is_compiling():  # a model reading layer.weight: no graph break
            out: torch.Tensor = torch.ops.quantcore_native.plain_weight(self.plain_handle)
            return out
        return self.unpack(self.packed)

    def release_plain_weight(self) -> bool:
        if self.packed is None:
            return False
        self.plain = None
        return True

    def plain_weight(self) -> QuantizedWeight:
        return QuantizedWeight(
            self.weight_format,
            self.plain_data(),
            scale=self.weight_scale,
            zero_point=self.weight_zero_point,
            spec=self.weight_spec,
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            return self.call_in_torch(x)
        if torch.compiler.is_compiling():
            return call_in_graph(self.graph_handle, x)
        packed = self.packed if self.packed is not None else self.pack()
        if x.dtype == torch.float32:
            return self._linear(x, packed, self.bias, self.activation_code)
        return self._linear(x, packed, self.bias, self.activation_code).to(x.dtype)


@torch.library.custom_op("quantcore_native::plain_weight", mutates_args=())
def _plain_weight_op(handle: torch.Tensor) -> torch.Tensor:
    """A released LinearKernel's plain weight, unpacked from its packed copy, as an op a
    torch.compile graph can hold (``handle``: its ``plain_handle``)."""
    kernel: LinearKernel = kernel_of_handle(handle)
    assert kernel.packed is not None
    return kernel.unpack(kernel.packed)


@_plain_weight_op.register_fake
def _plain_weight_fake(handle: torch.Tensor) -> torch.Tensor:
    return handle.new_empty(handle.shape[:-1])


def supports_recurrent(request: KernelRequest, kernel_type: type[LinearKernel]) -> bool:
    """A recurrent layer whose linear pieces all run ``kernel_type`` (options of the op
    "recurrent": mode, hidden_size, num_layers, bidirectional, cells)."""
    cells = request.options.get("cells", ())
    kernels = [k for cell in cells for k in cell if k is not None]
    return (
        request.device.type == "cpu"
        and request.options.get("mode") in ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")
        and bool(kernels)
        and all(isinstance(k, kernel_type) for k in kernels)
    )


class RecurrentKernel:
    """A whole LSTM/GRU/RNN in one native call, over its linear pieces' packed weights.

    Called as ``kernel(x, h0, c0, lengths)`` with ``x`` [steps, batch, features], ``h0``
    [layers * directions, batch, out], ``c0`` the LSTM cell state (any tensor otherwise,
    returned as it is) and ``lengths`` the valid steps per batch element of a padded sequence
    (or None); returns ``(output, h_n, c_n)``. Under ``torch.compile`` the call is one opaque op
    of the graph (``quantcore_native::recurrent``), which runs the eager call and then
    ``after_graph_call`` (set by the layer), so a compiled model keeps the native sequence loop.
    """

    def __init__(self, request: KernelRequest) -> None:
        options: Mapping[str, Any] = request.options
        self.mode: str = options["mode"]
        self.hidden_size: int = options["hidden_size"]
        self.num_layers: int = options["num_layers"]
        self.bidirectional: bool = options["bidirectional"]
        self.cells: tuple[tuple[LinearKernel, LinearKernel, LinearKernel | None], ...]
        self.cells = options["cells"]
        self.packed: _C.Recurrent | None = None  # built on the first call
        self._no_lengths = torch.empty(0, dtype=torch.long)
        self.after_graph_call: Callable[[], None] | None = None
        self.graph_handle = graph_handle(self, (2 if self.bidirectional else 1,))

    def _build(self) -> _C.Recurrent:
        packed: _C.Recurrent = extension().Recurrent(
            self.mode, self.hidden_size, self.num_layers, self.bidirectional
        )
        for ih, hh, hr in self.cells:
            packed.add_cell(ih.pack(), hh.pack(), ih.bias, hh.bias)
            if hr is not None:
                packed.add_projection(hr.pack())
        return packed

    def __call__(
        self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if torch.compiler.is_compiling():
            out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = _recurrent_op(
                x, h0, c0, lengths, self.graph_handle
            )
            return out
        return self.run(x, h0, c0, lengths)

    def run(
        self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The eager call."""
        packed = self.packed if self.packed is not None else self._build()
        self.packed = packed
        output, h_n, c_n = packed.forward(
            x, h0, c0, self._no_lengths if lengths is None else lengths
        )
        if x.dtype == h0.dtype == c0.dtype == torch.float32:
            return output, h_n, c_n
        return output.to(x.dtype), h_n.to(h0.dtype), c_n.to(c0.dtype)


@torch.library.custom_op("quantcore_native::recurrent", mutates_args=())
def _recurrent_op(
    x: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor,
    lengths: torch.Tensor | None,
    handle: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A RecurrentKernel's call as an op a torch.compile graph can hold (``handle``: its
    graph handle). Outputs are new tensors: an op may not return its input (the c0 a GRU
    passes through)."""
    kernel: RecurrentKernel = kernel_of_handle(handle)
    output, h_n, c_n = kernel.run(x, h0, c0, lengths)
    if kernel.after_graph_call is not None:
        kernel.after_graph_call()
    return output, h_n, (c_n.clone() if c_n is c0 else c_n)


@_recurrent_op.register_fake
def _recurrent_fake(
    x: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor,
    lengths: torch.Tensor | None,
    handle: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    directions = handle.shape[0]
    output = x.new_empty((x.shape[0], x.shape[1], directions * h0.shape[-1]))
    return output, torch.empty_like(h0), torch.empty_like(c0)


# ------------------------------------------------------------------------------- embeddings

_BAG_MODES = {"sum": 0, "mean": 1, "max": 2}


def supports_table(request: KernelRequest) -> bool:
    """A table the native lookups read: float16 rows, or int8 rows with one scale (and zero
    point) per row or per table."""
    weight = request.weight
    data, scale = weight.data, weight.scale
    if request.device.type != "cpu" or data.dim() != 2:
        return False
    if data.dtype == torch.float16:
        return scale is None
    per_row = scale is not None and scale.numel() == data.shape[0] and weight.spec is not None
    per_table = scale is not None and scale.numel() == 1
    row_axis = weight.spec is None or weight.spec.axis % 2 == 0
    return data.dtype == torch.int8 and (per_table or (per_row and row_axis))


@torch.library.custom_op("quantcore_native::embedding", mutates_args=())
def _embedding_op(
    table: torch.Tensor,
    scale: torch.Tensor | None,
    zero_point: torch.Tensor | None,
    input: torch.Tensor,
    max_norm: float,
    norm_type: float,
) -> torch.Tensor:
    """The lookup as an op a torch.compile graph can hold (eager calls skip it: pybind11 is
    several microseconds cheaper than the custom-op wrapper)."""
    out: torch.Tensor = extension().embedding(table, scale, zero_point, input, max_norm, norm_type)
    return out


@_embedding_op.register_fake
def _embedding_fake(
    table: torch.Tensor,
    scale: torch.Tensor | None,
    zero_point: torch.Tensor | None,
    input: torch.Tensor,
    max_norm: float,
    norm_type: float,
) -> torch.Tensor:
    return table.new_empty((*input.shape, table.shape[1]), dtype=torch.float32)


@torch.library.custom_op("quantcore_native::embedding_bag", mutates_args=())
def _embedding_bag_op(
    table: torch.Tensor,
    scale: torch.Tensor | None,
    zero_point: torch.Tensor | None,
    input: torch.Tensor,
    offsets: torch.Tensor | None,
    per_sample_weights: torch.Tensor | None,
    mode: int,
    include_last_offset: bool,
    padding_idx: int,
    max_norm: float,
    norm_type: float,
) -> torch.Tensor:
    out: torch.Tensor = extension().embedding_bag(
        table,
        scale,
        zero_point,
        input,
        offsets,
        per_sample_weights,
        mode,
        include_last_offset,
        padding_idx,
        max_norm,
        norm_type,
    )
    return out


@_embedding_bag_op.register_fake
def _embedding_bag_fake(
    table: torch.Tensor,
    scale: torch.Tensor | None,
    zero_point: torch.Tensor | None,
    input: torch.Tensor,
    offsets: torch.Tensor | None,
    per_sample_weights: torch.Tensor | None,
    mode: int,
    include_last_offset: bool,
    padding_idx: int,
    max_norm: float,
    norm_type: float,
) -> torch.Tensor:
    if input.dim() == 2:
        bags = input.shape[0]
    else:
        assert offsets is not None
        bags = offsets.shape[0] - (1 if include_last_offset else 0)
    return table.new_empty((bags, table.shape[1]), dtype=torch.float32)


class _TableKernel:
    """The table's tensors, and the format's reference kernel for what the native lookups do not
    cover."""

    def __init__(self, request: KernelRequest, reference: Callable[..., torch.Tensor]) -> None:
        weight = request.weight
        self.table = weight.data.contiguous()
        self.scale = None if weight.scale is None else weight.scale.reshape(-1)
        self.zero_point = None if weight.zero_point is None else weight.zero_point.reshape(-1)
        self.dtype: torch.dtype = request.options["dtype"]
        max_norm = request.options.get("max_norm")
        self.max_norm = -1.0 if max_norm is None else float(max_norm)  # negative: none
        self.norm_type = float(request.options.get("norm_type", 2.0))
        # torch renormalizes by max_norm only for a positive norm_type
        self.native_serves = self.max_norm < 0 or self.norm_type > 0
        self.reference = reference
        self.native = extension()


class EmbeddingKernel(_TableKernel):
    """``nn.Embedding`` lookups in one native call."""

    def __call__(self, input: torch.Tensor) -> torch.Tensor:
        if not self.native_serves:
            return self.reference(input)
        lookup = _embedding_op if torch.compiler.is_compiling() else self.native.embedding
        out: torch.Tensor = lookup(
            self.table, self.scale, self.zero_point, input, self.max_norm, self.norm_type
        )
        return out if self.dtype == torch.float32 else out.to(self.dtype)


def _ends_at_input_end(input: torch.Tensor, offsets: torch.Tensor | None) -> bool:
    if offsets is None:  # a 2-D input: one bag per row
        return True
    if torch.compiler.is_compiling():  # reading the offset would break the graph
        return False
    if input.dim() != 1 or offsets.dim() != 1 or offsets.numel() == 0:
        return False  # the reference raises torch's own error
    return int(offsets[-1]) == input.numel()


class EmbeddingBagKernel(_TableKernel):
    """``nn.EmbeddingBag`` (every mode, offsets, per_sample_weights, padding_idx) in one native
    call."""

    def __init__(self, request: KernelRequest, reference: Callable[..., torch.Tensor]) -> None:
        super().__init__(request, reference)
        options = request.options
        self.mode = _BAG_MODES[options.get("mode", "mean")]
        self.include_last_offset: bool = options.get("include_last_offset", False)
        # With include_last_offset, torch's mean and max treat the last bag oddly when the last
        # offset falls short of the input's end (max reads on to the end; mean sums to the
        # offset but divides by the count to the end). Only those calls go to the reference,
        # which reproduces it; offsets that end at the input's end, the documented use, run here.
        self.check_last_offset = self.include_last_offset and self.mode != 0
        padding_idx = options.get("padding_idx")
        self.padding_idx = -1 if padding_idx is None else padding_idx % self.table.shape[0]

    def __call__(
        self,
        input: torch.Tensor,
        offsets: torch.Tensor | None = None,
        per_sample_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not self.native_serves or (
            self.check_last_offset and not _ends_at_input_end(input, offsets)
        ):
            return self.reference(input, offsets, per_sample_weights)
        bag = _embedding_bag_op if torch.compiler.is_compiling() else self.native.embedding_bag
        out: torch.Tensor = bag(
            self.table,
            self.scale,
            self.zero_point,
            input,
            offsets,
            per_sample_weights,
            self.mode,
            self.include_last_offset,
            self.padding_idx,
            self.max_norm,
            self.norm_type,
        )
        return out if self.dtype == torch.float32 else out.to(self.dtype)
