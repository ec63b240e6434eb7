"""The quantized-module runtime, for layer mappers: a quantized layer holds its weight as plain
buffers (so ``state_dict`` is plain), runs through a kernel backend chosen for its device, and
chooses again when it moves, is loaded or is unpickled. Format-agnostic: the scheme's
dequantizer and the kernel backends registered for the weight's format do the format's work.

:class:`QuantizedModule` is the base (kernel selection, the float ``.weight`` view, dropping the
plain weight once a :class:`~quantcore.plugin.PackedWeightKernel` holds a packed copy);
:class:`QuantizedLinear` is the quantized ``nn.Linear``; :class:`QuantizedContainer` a layer whose
work is done by quantized children; :func:`register_weight` and :func:`kernel_request` the two
calls a new quantized layer needs.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from quantcore.errors import LayerSkipped
from quantcore.float_view import DequantizedView, tracing
from quantcore.registrations import KernelBackend, KernelRequest, PackedWeightKernel
from quantcore.specs import ActivationSpec, QuantizedWeight, WeightSpec

Dequantizer = Callable[[QuantizedWeight], torch.Tensor]

# The activations a linear layer can hand to its kernel (QuantizedLinear.fuse_activation), with
# the float function each one is: what a kernel's fused epilogue must compute.
FUSABLE_ACTIVATIONS: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": functools.partial(F.gelu, approximate="tanh"),
    "silu": F.silu,
}


def select_kernel(
    backends: tuple[KernelBackend, ...], request: KernelRequest
) -> tuple[KernelBackend, Callable[..., torch.Tensor]]:
    """The first available backend that supports ``request`` (the reference one comes last).

    A ``fused_activation`` option reaches only a backend that lists it in ``fused_activations``.
    """
    for backend in backends:
        if backend.is_available() and backend.supports(request):
            return backend, backend.prepare(_request_for(backend, request))
    names = ", ".join(b.name for b in backends) or "none registered"
    raise LayerSkipped(
        f"no kernel backend for {request.op} on {request.weight.format} weights on "
        f"{request.device} (candidates: {names})"
    )


def _request_for(backend: KernelBackend, request: KernelRequest) -> KernelRequest:
    activation = request.options.get("fused_activation")
    if activation is None or activation in backend.fused_activations:
        return request
    options = {k: v for k, v in request.options.items() if k != "fused_activation"}
    return dataclasses.replace(request, options=options)


def weak_call(method: Callable[[], None]) -> Callable[[], None]:
    """``method`` called through a weak reference: a kernel the module owns may keep it (as its
    ``after_graph_call``, say) without keeping the module alive."""
    ref = weakref.WeakMethod(method)

    def call() -> None:
        bound = ref()
        if bound is not None:
            bound()

    return call


class QuantizedModule(nn.Module):
    """Base of the quantized layers: keeps the kernel in step with the tensors' device."""

    kernel_name: str

    def __init__(self, op: str, backends: tuple[KernelBackend, ...]) -> None:
        super().__init__()
        self._op = op
        self._backends = backends
        self._kernel: Callable[..., torch.Tensor] | None = None
        self._backend: KernelBackend | None = None  # the one that prepared _kernel
        self.kernel_name = ""
        # buffer name -> (format, spec, dequantizer): reading ``module.<name>`` gives float values
        self._float_views: dict[str, tuple[str, WeightSpec | None, Dequantizer]] = {}
        # Once a PackedWeightKernel holds its packed copy, the plain ``weight`` data is dropped
        # (a shape-only meta tensor stands in) and rebuilt from the kernel whenever it is read.
        self._plain_released = False
        self._release_pending = False
        self.register_load_state_dict_post_hook(_reprepare_after_load)  # type: ignore[no-untyped-call]

    def _kernel_request(self) -> KernelRequest:
        raise NotImplementedError

    def __getattr__(self, name: str) -> Any:
        # Code outside quantcore often reads a layer's weight directly (a parent module using
        # ``child.weight``, a tied head, a dtype check). It gets the float values, dequantized
        # when first used (a DequantizedView); the quantized tensors stay in the buffers and the
        # state dict under the same name.
        views = self.__dict__.get("_float_views")
        if views and name in views:
            data = self.__dict__["_buffers"].get(name)
            if data is not None:
                return self._float_view(name)
        return super().__getattr__(name)

    def dequantized(self, name: str = "weight") -> torch.Tensor:
        """The float value of quantized weight ``name`` (a new tensor each call)."""
        return self._dequantize_later(name)()

    def _dequantize_later(self, name: str) -> Callable[[], torch.Tensor]:
        """What dequantizes weight ``name`` as it is now: the buffers are taken at this call; a
        released plain weight is rebuilt, when the values are needed, from this call's kernel."""
        weight_format, spec, dequantizer = self._float_views[name]
        buffers = self._buffers
        data = buffers.get(name)
        assert data is not None
        scale, zero_point = buffers.get(f"{name}_scale"), buffers.get(f"{name}_zero_point")
        dtype = self.__dict__.get("output_dtype", torch.float32)
        released = name == "weight" and self._plain_released and data.is_meta
        kernel = cast(PackedWeightKernel, self._kernel) if released else None

        def dequantize() -> torch.Tensor:
            plain = data if kernel is None else kernel.plain_weight().data
            quantized = QuantizedWeight(
                weight_format, plain, scale=scale, zero_point=zero_point, spec=spec
            )
            return dequantizer(quantized).to(dtype)

        return dequantize

    def _float_view(self, name: str) -> torch.Tensor:
        dequantize = self._dequantize_later(name)
        shape = self._float_shape(name)
        if shape is None or tracing():
            return dequantize()
        buffers = self._buffers
        placed = [t for t in (buffers[name], buffers.get(f"{name}_scale")) if t is not None]
        device = next((t.device for t in placed if not t.is_meta), torch.device("cpu"))
        dtype = self.__dict__.get("output_dtype", torch.float32)
        return DequantizedView(shape, dtype, device, dequantize)

    def _float_shape(self, name: str) -> torch.Size | None:
        """The dequantized shape of weight ``name``, found once by dequantizing on the meta
        device; None where the scheme's dequantizer cannot run there (reads then dequantize)."""
        buffers = self._buffers
        data = buffers[name]
        assert data is not None
        key = (name, data.shape, data.dtype)
        shapes = self.__dict__.setdefault("_float_shapes", {})
        if key not in shapes:
            weight_format, spec, dequantizer = self._float_views[name]
            scale, zero_point = buffers.get(f"{name}_scale"), buffers.get(f"{name}_zero_point")
            meta = QuantizedWeight(
                weight_format,
                data.to("meta"),
                scale=None if scale is None else scale.to("meta"),
                zero_point=None if zero_point is None else zero_point.to("meta"),
                spec=spec,
            )
            try:
                shapes[key] = dequantizer(meta).shape
            except Exception:  # a dequantizer that needs real values
                shapes[key] = None
        return cast("torch.Size | None", shapes[key])

    def _prepare_kernel(self) -> None:
        backend, self._kernel = select_kernel(self._backends, self._kernel_request())
        self._backend = backend
        self.kernel_name = backend.name
        self._release_pending = isinstance(self._kernel, PackedWeightKernel)
        if self._release_pending and hasattr(self._kernel, "after_graph_call"):
            # a call the kernel runs inside a torch.compile graph op bypasses _call_kernel; the
            # kernel reports it instead, so the plain weight goes under torch.compile too
            self._kernel.after_graph_call = weak_call(self._release_if_pending)

    def _call_kernel(self, *args: Any) -> torch.Tensor:
        assert self._kernel is not None
        out = self._kernel(*args)
        if not torch.compiler.is_compiling():  # not read while tracing: no guard on it
            self._release_if_pending()
        return out

    def _release_if_pending(self) -> None:
        if self._release_pending:
            self._release_plain_weight()

    def kernel_ran_elsewhere(self) -> bool:
        """Tell the layer its kernel served a call outside its own ``forward`` (a parent's fused
        kernel ran on this layer's packed weight): it may drop its plain weight, as after a call
        of its own. True once nothing is left to drop."""
        self._release_if_pending()
        return not self._release_pending

    def _release_plain_weight(self) -> None:
        """Drop the plain weight data once the kernel keeps a packed copy it can rebuild it
        from: at run time the weight is in memory once, not twice."""
        kernel = cast(PackedWeightKernel, self._kernel)
        if not kernel.release_plain_weight():
            return
        data = self._buffers["weight"]
        assert data is not None
        self._release_pending = False
        self._plain_released = True  # first: a reader that then finds meta data rebuilds it
        self._buffers["weight"] = torch.empty(data.shape, dtype=data.dtype, device="meta")

    def _buffer(self, name: str) -> torch.Tensor | None:
        """Buffer ``name``'s value; a released plain weight comes back rebuilt (a new tensor)."""
        data = self._buffers.get(name)
        if name == "weight" and self._plain_released and data is not None and data.is_meta:
            return cast(PackedWeightKernel, self._kernel).plain_weight().data
        return data

    def _restore_plain_weight(self) -> None:
        """Put the plain weight back in place (before a move, a load or a copy)."""
        if self._plain_released:
            self._buffers["weight"] = self._buffer("weight")
            self._plain_released = False
            self._release_pending = isinstance(self._kernel, PackedWeightKernel)

    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        saved = destination.get(prefix + "weight")
        if isinstance(saved, torch.Tensor) and saved.is_meta and self._plain_released:
            destination[prefix + "weight"] = self._buffer("weight")

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._restore_plain_weight()
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(
        self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True
    ) -> QuantizedModule:
        self._restore_plain_weight()
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        self._prepare_kernel()
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self._plain_released:  # the copy gets the plain weight; this module stays lean
            state["_buffers"] = OrderedDict(self._buffers)
            state["_buffers"]["weight"] = self._buffer("weight")
            state["_plain_released"] = False
        state["_kernel"] = None  # prepared kernels may hold closures or packed weights
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("_plain_released", False)  # pickled by a version without release
        super().__setstate__(state)  # type: ignore[no-untyped-call]
        self._prepare_kernel()


def _reprepare_after_load(module: nn.Module, _keys: Any) -> None:
    if isinstance(module, QuantizedModule):
        module._prepare_kernel()


def register_weight(module: nn.Module, weight: QuantizedWeight, name: str = "weight") -> None:
    """Hold ``weight`` as buffers ``name``, ``name_scale``, ``name_zero_point`` (those it has);
    on a QuantizedModule, reading ``module.<name>`` then gives the dequantized float values."""
    for key, tensor in weight.tensors(name).items():
        module.register_buffer(key, tensor)
    if isinstance(module, QuantizedModule) and weight.dequantizer is not None:
        module._float_views[name] = (weight.format, weight.spec, weight.dequantizer)


class QuantizedLinear(QuantizedModule):
    """Drop-in for ``nn.Linear``: ``weight`` holds the quantized values, ``weight_scale`` (and
    ``weight_zero_point``) their parameters; ``bias`` stays float.

    With ``fused_activation`` set (:meth:`fuse_activation`), the layer computes
    ``activation(linear(x))``: in the kernel's epilogue where its backend can, after the call
    otherwise.
    """

    fused_activation: str | None = None  # class default: layers pickled before it existed
    _activation_after: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        weight: QuantizedWeight,
        bias: torch.Tensor | None,
        activation: ActivationSpec | None,
        backends: tuple[KernelBackend, ...],
    ) -> None:
        super().__init__("linear", backends)
        self.in_features = in_features
        self.out_features = out_features
        self.weight_format = weight.format
        self.weight_spec: WeightSpec | None = weight.spec
        self.activation = activation
        register_weight(self, weight)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self._prepare_kernel()

    def quantized_weight(self) -> QuantizedWeight:
        buffers: Mapping[str, torch.Tensor] = self._buffers  # type: ignore[assignment]
        data = self._buffer("weight")
        assert data is not None
        return QuantizedWeight(
            self.weight_format,
            data,
            scale=buffers.get("weight_scale"),
            zero_point=buffers.get("weight_zero_point"),
            spec=self.weight_spec,
        )

    def _kernel_request(self) -> KernelRequest:
        weight = self.quantized_weight()
        options = (
            {} if self.fused_activation is None else {"fused_activation": self.fused_activation}
        )
        return KernelRequest(
            "linear", weight, self.bias, self.activation, weight.data.device, options
        )

    def _prepare_kernel(self) -> None:
        super()._prepare_kernel()
        name = self.fused_activation
        assert self._backend is not None
        if name is None or name in self._backend.fused_activations:
            self._activation_after = None
        else:
            self._activation_after = FUSABLE_ACTIVATIONS[name]

    def fuse_activation(self, name: str | None) -> None:
        """Make this layer compute ``FUSABLE_ACTIVATIONS[name](linear(x))`` (None: plain
        linear again); the kernel is chosen again with the activation in its request."""
        if name is not None and name not in FUSABLE_ACTIVATIONS:
            known = ", ".join(FUSABLE_ACTIVATIONS)
            raise ValueError(f"cannot fuse activation {name!r}: the fusable ones are {known}")
        self._restore_plain_weight()
        self.fused_activation = name
        self._prepare_kernel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._call_kernel(x)
        if self._activation_after is not None:
            out = self._activation_after(out)
        return out

    def extra_repr(self) -> str:
        fused = "" if self.fused_activation is None else f", activation={self.fused_activation}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, format={self.weight_format}{fused}, "
            f"kernel={self.kernel_name}"
        )


def kernel_request(
    module: QuantizedModule, op: str, name: str = "weight", **options: Any
) -> KernelRequest:
    """The request for a module holding one quantized weight in buffers ``name``, ``name_scale``,
    ``name_zero_point`` (with ``weight_format`` and ``weight_spec`` attributes), a float ``bias``
    attribute and an ``activation`` spec attribute (None or absent: weight-only)."""
    buffers = module._buffers
    data = module._buffer(name)
    assert data is not None
    weight = QuantizedWeight(
        module.weight_format,
        data,
        scale=buffers.get(f"{name}_scale"),
        zero_point=buffers.get(f"{name}_zero_point"),
        spec=module.weight_spec,
    )
    bias = getattr(module, "bias", None)
    activation = getattr(module, "activation", None)
    return KernelRequest(op, weight, bias, activation, data.device, options)


class QuantizedContainer(QuantizedModule):
    """A quantized layer whose work is done by quantized children (QuantizedLinear pieces): the
    children pick and re-pick their kernels; this module only reports which ones run."""

    def __init__(self, op: str) -> None:
        super().__init__(op, ())

    def _prepare_kernel(self) -> None:
        names = sorted(
            {
                m.kernel_name
                for m in self.modules()
                if m is not self and isinstance(m, QuantizedModule)
            }
        )
        self.kernel_name = ", ".join(names)


def kernel_names(module: nn.Module) -> str | None:
    """The kernel backend(s) a converted layer runs: its own, or those of the quantized modules
    inside it (a mapper's wrapper module), comma-separated; None when there are none."""
    if isinstance(module, QuantizedModule):
        return module.kernel_name or None
    names = {
        name
        for m in module.modules()
        if m is not module and isinstance(m, QuantizedModule)
        for name in m.kernel_name.split(", ")
        if name
    }
    return ", ".join(sorted(names)) or None


def track_dtype(dtype: torch.dtype, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.dtype:
    """The dtype a float tensor of ``dtype`` gets from an ``nn.Module._apply`` function, so a
    quantized module moved with ``.to(torch.bfloat16)`` / ``.half()`` returns that dtype."""
    try:
        return fn(torch.empty(0, dtype=dtype)).dtype
    except Exception:  # an _apply function that only makes sense for real tensors
        return dtype


class DtypeTrackingModule(QuantizedModule):
    """A quantized module whose output dtype is its own (embeddings: the input holds indices)."""

    output_dtype: torch.dtype

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        self.output_dtype = track_dtype(self.output_dtype, fn)
        return super()._apply(fn, recurse)
