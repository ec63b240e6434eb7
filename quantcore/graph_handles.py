"""Kernels inside ``torch.compile`` graphs: a prepared kernel whose state is no tensor (a packed
weight that is a script object, say) cannot be traced, and a ``torch.compiler.disable``d call
costs a graph break per layer. A kernel can instead run its whole eager call as one opaque op of
the graph, ``quantcore::kernel_call``; custom ops take tensors, not Python objects, so a
zero-size tensor, the kernel's graph handle, stands for the kernel."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch

_HANDLE_ATTRIBUTE = "_quantcore_kernel"


def graph_handle(
    kernel: object, shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A zero-size tensor that stands for ``kernel`` in ``torch.compile`` graphs.

    Its shape is ``(*shape, 0)``: no bytes, but enough for :func:`call_in_graph`'s op to give its
    output's shape while tracing (``shape`` is what the kernel's output has after the input's
    leading dims: ``(out_features,)`` for a linear layer). A kernel's own ops may give it another
    ``dtype`` and shape to describe their outputs. It refers to the kernel weakly, so the kernel
    may keep it without a reference cycle.
    """
    handle = torch.empty((*shape, 0), dtype=dtype)
    setattr(handle, _HANDLE_ATTRIBUTE, weakref.ref(kernel))
    return handle


def kernel_of_handle(handle: torch.Tensor) -> Any:
    """The kernel a :func:`graph_handle` stands for."""
    ref = getattr(handle, _HANDLE_ATTRIBUTE, None)
    kernel = None if ref is None else ref()
    if kernel is None:
        raise RuntimeError(
            "this tensor is not a live quantcore graph handle: the compiled graph outlived the "
            "quantized layer it was traced from (or was given another tensor); compile the "
            "model again"
        )
    return kernel


@torch.library.custom_op("quantcore::kernel_call", mutates_args=())
def _kernel_call(x: torch.Tensor, handle: torch.Tensor) -> torch.Tensor:
    kernel = kernel_of_handle(handle)
    out: torch.Tensor = kernel(x)
    after = getattr(kernel, "after_graph_call", None)
    if after is not None:  # the layer's release check (PackedWeightKernel)
        after()
    return out


@_kernel_call.register_fake
def _kernel_call_fake(x: torch.Tensor, handle: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], *handle.shape[:-1]))


def call_in_graph(handle: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``kernel(x)`` as one opaque op of the graph being traced, for the kernel ``handle`` stands
    for (its eager call runs when the graph runs). The output has ``x``'s dtype and leading dims
    followed by the handle's ``shape``; afterwards the kernel's ``after_graph_call``, if set, is
    called (see :class:`quantcore.plugin.PackedWeightKernel`)."""
    out: torch.Tensor = torch.ops.quantcore.kernel_call(x, handle)
    return out
