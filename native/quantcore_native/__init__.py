"""quantcore_native: the compiled CPU kernels the first-party int8 and fp16 plugins run on.

A C++ extension (``quantcore_native._C``, built from ``native/csrc`` at install time against the
installed torch) around fbgemm's GEMMs: an int8 linear that quantizes its activations per token,
a float16-weight linear, and whole LSTM/GRU/RNN sequences over either. It is optional: where it
is not built, does not load, or is switched off (``QUANTCORE_DISABLE_NATIVE=1``), the plugins'
pure-torch kernels run, and :func:`unavailable_reason` says why.

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

from quantcore.plugin import KernelRequest, QuantizedWeight, call_in_graph, graph_handle

if TYPE_CHECKING:
    from quantcore_native import _C

__all__ = [
    "DISABLE_VARIABLE",
    "LinearKernel",
    "RecurrentKernel",
    "available",
    "extension",
    "supports_recurrent",
    "unavailable_reason",
]

_log = logging.getLogger("quantcore")

# Set to 1 to run without the native kernels (the pure-torch ones take over), e.g. to compare them.
DISABLE_VARIABLE = "QUANTCORE_DISABLE_NATIVE"
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
        self.native = extension()
        self._linear: Callable[..., torch.Tensor] = self.native.linear

    def make_packed(self, plain: torch.Tensor) -> _C.NativeLinear:
        raise NotImplementedError

    def unpack(self, packed: _C.NativeLinear) -> torch.Tensor:
        raise NotImplementedError

    def differentiable(self, x: torch.Tensor) -> torch.Tensor:
        """The reference math in differentiable torch ops (the native op has no autograd)."""
        raise NotImplementedError

    def pack(self) -> _C.NativeLinear:
        if self.packed is None:
            self.packed = self.make_packed(self.plain_data())
        return self.packed

    def plain_data(self) -> torch.Tensor:
        if self.plain is not None:
            return self.plain
        assert self.packed is not None
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
            return self.differentiable(x)
        if torch.compiler.is_compiling():
            return call_in_graph(self.graph_handle, x)
        packed = self.packed if self.packed is not None else self.pack()
        if x.dtype == torch.float32:
            return self._linear(x, packed, self.bias)
        return self._linear(x, packed, self.bias).to(x.dtype)


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
    (or None); returns ``(output, h_n, c_n)``.
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
        packed = self.packed if self.packed is not None else self._build()
        self.packed = packed
        no_lengths = x.new_empty(0, dtype=torch.long)
        output, h_n, c_n = packed.forward(
            x.to(torch.float32),
            h0.to(torch.float32),
            c0,
            no_lengths if lengths is None else lengths,
        )
        return output.to(x.dtype), h_n.to(h0.dtype), c_n.to(c0.dtype)
