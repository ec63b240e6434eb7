"""The float weight a quantized layer hands to code that reads ``layer.weight``, dequantized only
when its values are used.

Models read their children's weights in every forward pass just to look at them: T5 checks
``self.wo.weight.dtype``, ViT ``projection.weight.dtype``, ``nn.TransformerEncoderLayer`` gathers
``linear1.weight`` and friends to decide on its fused path. Dequantizing on each read made those
probes cost a full float copy of the weight per call (a BERT-base-sized encoder layer ran 1.3x
slower than float for it). A :class:`DequantizedView` answers shape, dtype and device questions
from its own metadata and computes the float values on first real use, once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_map

# Answered from the view's metadata, without its values. ``detach`` and ``requires_grad_`` stay
# lazy so that ``nn.Parameter(layer.weight)`` keeps working (it detaches, then sets the flag).
_METADATA_PROPERTIES = (
    "dtype", "shape", "device", "ndim", "layout", "requires_grad", "is_cuda", "is_cpu",
    "is_meta", "is_sparse", "is_quantized", "is_leaf", "grad_fn", "grad",
)  # fmt: skip
_METADATA_METHODS = (
    "size", "dim", "ndimension", "numel", "nelement", "element_size", "is_floating_point",
    "is_complex", "get_device", "__len__", "is_contiguous", "stride", "detach", "requires_grad_",
)  # fmt: skip
_METADATA_ONLY: frozenset[Any] = frozenset(
    [getattr(torch.Tensor, name).__get__ for name in _METADATA_PROPERTIES]
    + [getattr(torch.Tensor, name) for name in _METADATA_METHODS]
)


class DequantizedView(torch.Tensor):
    """A float tensor whose values are computed by ``source`` the first time they are used.

    Any operation on it (arithmetic, ``numpy()``, ``torch.save``, printing) runs on the computed
    values and returns plain tensors; the values are computed once per view and kept by it.
    """

    _source: Callable[[], torch.Tensor]
    _value: torch.Tensor | None

    @staticmethod
    def __new__(
        cls,
        shape: torch.Size,
        dtype: torch.dtype,
        device: torch.device,
        source: Callable[[], torch.Tensor],
    ) -> DequantizedView:
        view = torch.Tensor._make_wrapper_subclass(cls, shape, dtype=dtype, device=device)
        view._source = source
        view._value = None
        return view

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # __new__ did the work
        super().__init__()

    def materialize(self) -> torch.Tensor:
        """The float values, computed on the first call."""
        if self._value is None:
            value = self._source()
            if value.shape != self.shape or value.dtype != self.dtype:
                raise RuntimeError(
                    f"the dequantized weight has shape {tuple(value.shape)} and dtype "
                    f"{value.dtype}, but its view promised {tuple(self.shape)} and {self.dtype}"
                )
            self._value = value
        return self._value

    def __repr__(self, *, tensor_contents: Any = None) -> str:  # type: ignore[override]
        return repr(self.materialize())

    @classmethod
    def __torch_function__(
        cls,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func in _METADATA_ONLY:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **(kwargs or {}))
        return _on_values(func, args, kwargs)

    @classmethod
    def __torch_dispatch__(  # type: ignore[override]
        cls,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func is torch.ops.aten.detach.default:
            (view,) = args
            return DequantizedView(view.shape, view.dtype, view.device, view.materialize)
        return _on_values(func, args, kwargs)


def _on_values(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> Any:
    """``func`` called with every view among its arguments replaced by its values."""
    args, kwargs = tree_map(_materialized, (args, kwargs or {}))
    return func(*args, **kwargs)


def _materialized(value: Any) -> Any:
    return value.materialize() if isinstance(value, DequantizedView) else value


def tracing() -> bool:
    """Whether a tracer or a mode is watching: they get plain tensors, as before views existed."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    return bool(
        torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch._C._get_tracing_state() is not None
        or torch.fx._symbolic_trace.is_fx_symbolic_tracing()
        or torch._C._is_torch_function_mode_enabled()
        or _get_current_dispatch_mode() is not None
    )
