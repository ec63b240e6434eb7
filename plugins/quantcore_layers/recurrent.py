"""nn.LSTM, nn.GRU, nn.RNN (tanh, relu) and their cells.

Every weight matrix (input-hidden, hidden-hidden, LSTM projection) becomes a QuantizedLinear, so
weights are quantized per gate row and run through the scheme's linear kernels: the input
projection for all time steps in one call, then the recurrence step by step. A kernel backend
for the op "recurrent" may run the whole sequence (or the cell's step) at once over those
linear kernels; without one, or where it cannot serve a call (autograd, dropout in training,
torch.compile), the Python loop here runs, and it is the reference.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from quantcore import plugin
from quantcore.plugin import (
    ConversionContext,
    KernelBackend,
    KernelRequest,
    QuantizedContainer,
    QuantizedLinear,
    QuantizedModule,
)
from quantcore_layers.common import (
    module_bias,
    module_tensor,
    quantized_linear,
    refuse_overridden_forward,
)

State = tuple[torch.Tensor, torch.Tensor]  # (h, c); c is unused (empty) outside LSTM


def _step(
    mode: str,
    gi: torch.Tensor,
    gh: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    proj: Callable[[torch.Tensor], torch.Tensor] | None,
) -> State:
    """One time step, given the input part ``gi`` and the hidden part ``gh`` of the gates."""
    if mode == "LSTM":
        i, f, g, o = (gi + gh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return (h if proj is None else proj(h)), c
    if mode == "GRU":
        ir, iz, in_ = gi.chunk(3, dim=-1)
        hr, hz, hn = gh.chunk(3, dim=-1)
        r = torch.sigmoid(ir + hr)
        z = torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        return (1 - z) * n + z * h, c
    pre = gi + gh
    return (torch.tanh(pre) if mode == "RNN_TANH" else torch.relu(pre)), c


def _mode(module: nn.Module) -> str:
    if isinstance(module, (nn.LSTM, nn.LSTMCell)):
        return "LSTM"
    if isinstance(module, (nn.GRU, nn.GRUCell)):
        return "GRU"
    nonlinearity = getattr(module, "nonlinearity", "tanh")
    return "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"


class _QuantizedRecurrent(QuantizedContainer):
    """What QuantizedRNN and QuantizedRNNCell share: the choice of a kernel for the op
    "recurrent" that runs the whole sequence over the layer's linear kernels."""

    mode: str
    hidden_size: int

    def __init__(self, backends: tuple[KernelBackend, ...]) -> None:
        super().__init__("recurrent")
        self._backends = backends
        self._pieces: tuple[object, ...] = ()  # the linear kernels the sequence kernel runs on
        self._piece_modules: tuple[QuantizedLinear, ...] = ()
        self._pieces_released = False  # every piece has dropped its plain weight

    def _cells(self) -> list[tuple[QuantizedLinear, ...]]:
        raise NotImplementedError

    def _shape(self) -> tuple[int, bool]:
        """(num_layers, bidirectional)"""
        raise NotImplementedError

    def _prepare_kernel(self) -> None:
        super()._prepare_kernel()  # kernel_name: the linear pieces' kernels
        self._kernel, self._pieces = None, ()
        backends = self.__dict__.get("_backends", ())  # pickled before sequence kernels
        cells = self._cells()
        self._piece_modules = tuple(piece for cell in cells for piece in cell)
        self._pieces_released = False
        kernels = tuple(tuple(piece._kernel for piece in cell) for cell in cells)
        if not backends or not cells:
            return
        num_layers, bidirectional = self._shape()
        first = cells[0][0]
        weight = first.quantized_weight()
        options = {
            "mode": self.mode,
            "hidden_size": self.hidden_size,
            "num_layers": num_layers,
            "bidirectional": bidirectional,
            "cells": tuple(cell + (None,) * (3 - len(cell)) for cell in kernels),
        }
        request = KernelRequest(
            "recurrent", weight, None, first.activation, weight.data.device, options
        )
        for backend in backends:
            if backend.is_available() and backend.supports(request):
                self._kernel = backend.prepare(request)
                self._pieces = tuple(k for cell in kernels for k in cell)
                self.kernel_name = ", ".join((backend.name, self.kernel_name))
                if hasattr(self._kernel, "after_graph_call"):
                    # a compiled graph runs the kernel as one op, not through forward()
                    self._kernel.after_graph_call = plugin.weak_call(self._after_sequence_call)
                return

    def _sequence_kernel(self, *inputs: torch.Tensor) -> Callable[..., Any] | None:
        """The sequence kernel, when it can serve this call: it has no autograd and no dropout,
        and enters a torch.compile graph only as an op of its own (``graph_handle``); the Python
        loop serves the rest."""
        if self._kernel is None:
            return None
        compiling = torch.compiler.is_compiling()
        if compiling and getattr(self._kernel, "graph_handle", None) is None:
            return None
        if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
            return None
        if self.training and getattr(self, "dropout", 0.0) > 0:
            return None
        if any(
            piece._kernel is not kernel
            for piece, kernel in zip(self._piece_modules, self._pieces, strict=True)
        ):
            self._prepare_kernel()  # a piece was re-prepared on its own (moved, reloaded)
        return self._kernel

    def _after_sequence_call(self) -> None:
        """The pieces' own calls did not run: let them drop their plain weights now (under
        torch.compile the kernel's op calls this, not forward())."""
        if torch.compiler.is_compiling():
            return
        if not self._pieces_released:
            self._pieces_released = all([p.kernel_ran_elsewhere() for p in self._piece_modules])

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_pieces"], state["_piece_modules"] = (), ()
        return state


class QuantizedRNN(_QuantizedRecurrent):
    """Drop-in for nn.LSTM / nn.GRU / nn.RNN: same inputs (tensor or PackedSequence, optional
    initial state, batched or not) and outputs."""

    def __init__(
        self,
        source: nn.RNNBase,
        linears: dict[str, QuantizedLinear],
        backends: tuple[KernelBackend, ...] = (),
    ) -> None:
        super().__init__(backends)
        self.mode = _mode(source)
        self.input_size = source.input_size
        self.hidden_size = source.hidden_size
        self.num_layers = source.num_layers
        self.bias = source.bias
        self.batch_first = source.batch_first
        self.dropout = float(source.dropout)
        self.bidirectional = source.bidirectional
        self.proj_size = source.proj_size
        self.linears = nn.ModuleDict(linears)
        self._prepare_kernel()

    def _cells(self) -> list[tuple[QuantizedLinear, ...]]:
        """The linear pieces of each layer and direction, in torch's order."""
        cells = []
        for layer in range(self.num_layers):
            for direction in range(2 if self.bidirectional else 1):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                names = ("ih", "hh", "hr") if self.proj_size else ("ih", "hh")
                cells.append(tuple(cast(QuantizedLinear, self.linears[n + suffix]) for n in names))
        return cells

    def _shape(self) -> tuple[int, bool]:
        return self.num_layers, self.bidirectional

    def forward(
        self, input: torch.Tensor | PackedSequence, hx: torch.Tensor | State | None = None
    ) -> tuple[torch.Tensor | PackedSequence, torch.Tensor | State]:
        packed = input if isinstance(input, PackedSequence) else None
        lengths: torch.Tensor | None = None
        if packed is not None:
            x, lengths = pad_packed_sequence(packed)
            lengths = lengths.to(x.device)
            batched = True
        else:
            assert isinstance(input, torch.Tensor)
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
        batch = x.shape[1]
        directions = 2 if self.bidirectional else 1
        out_size = self.proj_size or self.hidden_size
        h0, c0 = self._initial_state(hx, batched, batch, directions, out_size, x)

        kernel = self._sequence_kernel(x, h0, c0)
        if kernel is not None:
            output, h_out, c_out = kernel(x, h0, c0, lengths)
            self._after_sequence_call()
        else:
            output, h_out, c_out = self._loop(x, h0, c0, lengths)
        if not batched:
            h_out, c_out = h_out.squeeze(1), c_out.squeeze(1)
        state: torch.Tensor | State = (h_out, c_out) if self.mode == "LSTM" else h_out
        if packed is not None:
            assert lengths is not None
            order_idx = packed.sorted_indices
            if order_idx is not None:
                output, sorted_lengths = output.index_select(1, order_idx), lengths[order_idx]
            else:
                sorted_lengths = lengths
            data = pack_padded_sequence(output, sorted_lengths.cpu(), enforce_sorted=True).data
            return (
                PackedSequence(
                    data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices
                ),
                state,
            )
        if not batched:
            output = output.squeeze(1)
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, state

    def _loop(
        self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The reference: the layer's linear kernels, step by step in Python."""
        steps = x.shape[0]
        directions = 2 if self.bidirectional else 1
        layer_input = x
        h_n: list[torch.Tensor] = []
        c_n: list[torch.Tensor] = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                ih, hh = self.linears["ih" + suffix], self.linears["hh" + suffix]
                hr = self.linears["hr" + suffix] if self.proj_size else None
                gates_in = ih(layer_input)  # every time step at once
                index = layer * directions + direction
                h, c = h0[index], c0[index]
                order = range(steps) if direction == 0 else range(steps - 1, -1, -1)
                per_step: list[torch.Tensor] = [x.new_empty(0)] * steps
                for t in order:
                    h_new, c_new = _step(self.mode, gates_in[t], hh(h), h, c, hr)
                    if lengths is None:
                        h, c = h_new, c_new
                        per_step[t] = h
                    else:  # padded positions neither update the state nor produce output
                        valid = (t < lengths).unsqueeze(1)
                        h = torch.where(valid, h_new, h)
                        c = torch.where(valid, c_new, c) if self.mode == "LSTM" else c
                        per_step[t] = torch.where(valid, h_new, torch.zeros_like(h_new))
                outputs.append(torch.stack(per_step))
                h_n.append(h)
                c_n.append(c)
            layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=2)
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                layer_input = nn.functional.dropout(layer_input, self.dropout, training=True)
        return layer_input, torch.stack(h_n), torch.stack(c_n)

    def _initial_state(
        self,
        hx: torch.Tensor | State | None,
        batched: bool,
        batch: int,
        directions: int,
        out_size: int,
        x: torch.Tensor,
    ) -> State:
        count = self.num_layers * directions
        if hx is None:
            h0 = x.new_zeros(count, batch, out_size)
            c0 = x.new_zeros(count, batch, self.hidden_size if self.mode == "LSTM" else 0)
            return h0, c0
        if self.mode == "LSTM":
            assert isinstance(hx, tuple), "LSTM expects hx=(h_0, c_0)"
            h0, c0 = hx
        else:
            assert isinstance(hx, torch.Tensor), f"{self.mode} expects hx as one tensor"
            h0, c0 = hx, x.new_zeros(count, batch, 0)
        if not batched:
            h0 = h0.unsqueeze(1)
            c0 = c0.unsqueeze(1) if self.mode == "LSTM" else c0
        return h0, c0

    def extra_repr(self) -> str:
        return (
            f"{self.mode}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"bidirectional={self.bidirectional}, kernel={self.kernel_name}"
        )


class QuantizedRNNCell(_QuantizedRecurrent):
    """Drop-in for nn.LSTMCell / nn.GRUCell / nn.RNNCell."""

    def __init__(
        self,
        source: nn.RNNCellBase,
        ih: QuantizedLinear,
        hh: QuantizedLinear,
        backends: tuple[KernelBackend, ...] = (),
    ) -> None:
        super().__init__(backends)
        self.mode = _mode(source)
        self.input_size = source.input_size
        self.hidden_size = source.hidden_size
        self.bias = source.bias
        self.ih = ih
        self.hh = hh
        self._prepare_kernel()

    def _cells(self) -> list[tuple[QuantizedLinear, ...]]:
        return [(self.ih, self.hh)]

    def _shape(self) -> tuple[int, bool]:
        return 1, False

    def forward(
        self, input: torch.Tensor, hx: torch.Tensor | State | None = None
    ) -> torch.Tensor | State:
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        if hx is None:
            h = x.new_zeros(x.shape[0], self.hidden_size)
            c = h
        elif self.mode == "LSTM":
            assert isinstance(hx, tuple), "LSTMCell expects hx=(h, c)"
            h, c = hx
        else:
            assert isinstance(hx, torch.Tensor)
            h = c = hx
        if not batched and hx is not None:
            h, c = h.unsqueeze(0), c.unsqueeze(0)
        kernel = self._sequence_kernel(x, h, c)
        if kernel is not None:  # one step of a one-layer sequence (c0 is ignored outside LSTM)
            h0 = h.unsqueeze(0)
            _, h_n, c_n = kernel(x.unsqueeze(0), h0, c.unsqueeze(0), None)
            self._after_sequence_call()
            h_new, c_new = h_n[0], (c_n[0] if self.mode == "LSTM" else c)
        else:
            h_new, c_new = _step(self.mode, self.ih(x), self.hh(h), h, c, None)
        if not batched:
            h_new, c_new = h_new.squeeze(0), c_new.squeeze(0)
        return (h_new, c_new) if self.mode == "LSTM" else h_new

    def extra_repr(self) -> str:
        return f"{self.mode}, {self.input_size}, {self.hidden_size}, kernel={self.kernel_name}"


def is_recurrent(module: nn.Module) -> bool:
    return isinstance(module, (nn.RNNBase, nn.RNNCellBase)) and not isinstance(
        module, QuantizedModule
    )


def convert_recurrent(module: nn.Module, ctx: ConversionContext) -> nn.Module:
    if isinstance(module, nn.RNNCellBase):
        return _convert_cell(module, ctx)
    assert isinstance(module, nn.RNNBase)
    if not isinstance(module, (nn.LSTM, nn.GRU, nn.RNN)):
        raise plugin.LayerSkipped(f"{type(module).__name__} is not an LSTM, GRU or RNN")
    base = (
        nn.LSTM if isinstance(module, nn.LSTM) else nn.GRU if isinstance(module, nn.GRU) else nn.RNN
    )
    refuse_overridden_forward(module, base)
    linears: dict[str, QuantizedLinear] = {}
    for layer in range(module.num_layers):
        for direction in range(2 if module.bidirectional else 1):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            for part in ("ih", "hh"):
                linears[part + suffix] = quantized_linear(
                    ctx,
                    module_tensor(module, f"weight_{part}{suffix}", ctx),
                    module_bias(module, f"bias_{part}{suffix}", ctx) if module.bias else None,
                )
            if module.proj_size:
                linears["hr" + suffix] = quantized_linear(
                    ctx, module_tensor(module, f"weight_hr{suffix}", ctx), None
                )
    return QuantizedRNN(module, linears, ctx.kernel_candidates("recurrent"))


def _convert_cell(module: nn.RNNCellBase, ctx: ConversionContext) -> nn.Module:
    if not isinstance(module, (nn.LSTMCell, nn.GRUCell, nn.RNNCell)):
        raise plugin.LayerSkipped(f"{type(module).__name__} is not an LSTMCell, GRUCell or RNNCell")
    base = next(c for c in (nn.LSTMCell, nn.GRUCell, nn.RNNCell) if isinstance(module, c))
    refuse_overridden_forward(module, base)
    ih, hh = (
        quantized_linear(
            ctx,
            module_tensor(module, f"weight_{part}", ctx),
            module_bias(module, f"bias_{part}", ctx) if module.bias else None,
        )
        for part in ("ih", "hh")
    )
    return QuantizedRNNCell(module, ih, hh, ctx.kernel_candidates("recurrent"))


_RNN_WEIGHT = re.compile(r"^(.*?)weight_(ih|hh|hr)(_l\d+(?:_reverse)?)?$")


def recurrent_state_dict_layers(state_dict: Mapping[str, torch.Tensor]) -> Iterator[str]:
    """Prefixes holding ``weight_ih_l0`` (LSTM/GRU/RNN) or ``weight_ih`` (cells)."""
    for key, tensor in state_dict.items():
        match = _RNN_WEIGHT.match(key)
        if (
            match
            and match.group(2) == "ih"
            and match.group(3) in (None, "_l0")
            and tensor.dim() == 2
        ):
            prefix = match.group(1)
            if prefix == "" or prefix.endswith("."):
                yield prefix


def convert_recurrent_state_dict(
    prefix: str, tensors: Mapping[str, torch.Tensor], ctx: ConversionContext
) -> dict[str, torch.Tensor]:
    """The tensors QuantizedRNN (``linears.ih_l0.*``) or QuantizedRNNCell (``ih.*``) holds."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        match = re.match(r"^(weight|bias)_(ih|hh|hr)(_l\d+(?:_reverse)?)?$", key)
        if match is None:
            out[key] = ctx.clone(tensor)
            continue
        kind, part, suffix = match.groups()
        name = f"linears.{part}{suffix}" if suffix else part
        if kind == "weight":
            out.update(ctx.quantize_weight(tensor).tensors(f"{name}.weight"))
        else:
            out[f"{name}.bias"] = ctx.clone(tensor)
    return out
