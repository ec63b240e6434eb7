"""The typed, frozen objects that plugin hooks yield (one dataclass per extension point).

A plugin never subclasses anything from the kernel: it builds these records and yields them from
its hook implementations. The kernel validates them when it collects them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from quantcore.errors import UnknownObserverError, UnknownSchemeError
from quantcore.specs import (
    ActivationSpec,
    Granularity,
    LayerSpec,
    QuantizedWeight,
    QuantParams,
    WeightSpec,
)

if TYPE_CHECKING:
    from quantcore.context import ConversionContext
    from quantcore.manifest import Manifest


class ComputeParams(Protocol):
    """An observer's function: quantization parameters for ``tensor``; it knows nothing about modules."""

    def __call__(
        self,
        tensor: torch.Tensor,
        *,
        granularity: Granularity,
        axis: int,
        symmetric: bool,
        qmin: int,
        qmax: int,
    ) -> QuantParams: ...


class QuantizeWeight(Protocol):
    def __call__(
        self, weight: torch.Tensor, spec: WeightSpec, observer: Observer | None
    ) -> QuantizedWeight: ...


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


def _check_name(kind: str, name: object) -> None:
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(
            f"{kind} name must be a non-empty string without surrounding spaces: {name!r}"
        )


class Priority(IntEnum):
    """The scale ``priority`` fields are read on: higher is tried first.

    Any integer is accepted; these levels say what a number means. quantcore's own mappers and
    adapters sit at ``BUILTIN`` (a more specific built-in mapper a step above, adapters for
    rarer inputs steps below); its CPU kernel backends at ``DEFAULT`` plus 10-40 (40: the native ones), its CUDA ones
    at ``BUILTIN + 50`` and ``PREFERRED`` (their ``supports`` keeps them to CUDA tensors).
    """

    FALLBACK = -100  # only what nothing else takes (mappers that keep layers float)
    DEFAULT = 0  # a registration with no opinion
    BUILTIN = 100  # quantcore's own mappers and input adapters
    PREFERRED = 200  # ahead of every built-in: a plugin that replaces one


def _check_priority(kind: str, name: str, priority: object) -> None:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(
            f"{kind} {name!r}: priority must be an integer (see quantcore.plugin.Priority), "
            f"not {priority!r}"
        )


@dataclass(frozen=True)
class Observer:
    """Computes scale/zero-point from tensors (min/max, percentile, MSE search, ...)."""

    name: str
    compute: ComputeParams
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("observer", self.name)
        if not callable(self.compute):
            raise TypeError(f"observer {self.name!r}: compute must be callable")


@dataclass(frozen=True)
class Scheme:
    """A quantization scheme: a weight format plus the per-layer-kind decisions that go with it.

    ``layer_specs`` maps a layer kind (as layer mappers name them: "linear", "embedding", ...) to
    the :class:`LayerSpec` used for it; a kind missing from it is not quantized by this scheme.
    ``aliases`` are other names users may give (``quantize(dtype=...)``, case-insensitive);
    ``torch_dtypes`` are the torch dtypes that select it (``dtype=torch.qint8``, as torch.ao
    callers write). ``default=True`` makes it the scheme used when no dtype is given; at most one
    loaded scheme may say so.
    """

    name: str
    weight_format: str
    layer_specs: Mapping[str, LayerSpec]
    quantize_weight: QuantizeWeight
    dequantize_weight: Callable[[QuantizedWeight], torch.Tensor]
    description: str = ""
    aliases: tuple[str, ...] = ()
    torch_dtypes: tuple[torch.dtype, ...] = ()
    default: bool = False

    def __post_init__(self) -> None:
        _check_name("scheme", self.name)
        object.__setattr__(self, "layer_specs", _frozen_mapping(self.layer_specs))
        object.__setattr__(self, "aliases", tuple(self.aliases))
        object.__setattr__(self, "torch_dtypes", tuple(self.torch_dtypes))
        for alias in self.aliases:
            _check_name(f"scheme {self.name!r} alias", alias)
        for dtype in self.torch_dtypes:
            if not isinstance(dtype, torch.dtype):
                raise TypeError(f"scheme {self.name!r}: torch_dtypes holds {dtype!r}, no dtype")

    def names(self) -> tuple[str, ...]:
        """Every name that selects this scheme, lower-cased: its name, aliases, torch dtypes."""
        words = (self.name, *self.aliases, *(str(d) for d in self.torch_dtypes))
        return tuple(dict.fromkeys(w.lower() for w in words))
        for kind, spec in self.layer_specs.items():
            if not isinstance(spec, LayerSpec):
                raise TypeError(f"scheme {self.name!r}: spec for {kind!r} is not a LayerSpec")
        if not callable(self.quantize_weight) or not callable(self.dequantize_weight):
            raise TypeError(
                f"scheme {self.name!r}: quantize_weight/dequantize_weight must be callable"
            )


@dataclass(frozen=True)
class LayerMapper:
    """Finds the layers of one kind in a model and builds their quantized replacements.

    A mapper with ``keep_reason`` and no ``convert`` recognizes layers that stay in float on
    purpose (normalization, say); they are reported as kept with that reason.

    ``state_dict_layers`` and ``convert_state_dict`` let the mapper work on a bare state dict:
    the first returns the prefixes (``"encoder.fc."``) of layers it recognizes from tensor names
    and shapes, the second converts the tensors under one prefix (keys relative to it).
    """

    name: str
    layer_kind: str
    matches: Callable[[nn.Module], bool]
    convert: Callable[[nn.Module, ConversionContext], nn.Module] | None = None
    keep_reason: str | None = None
    priority: int = 0
    description: str = ""
    state_dict_layers: Callable[[Mapping[str, torch.Tensor]], Iterable[str]] | None = None
    convert_state_dict: (
        Callable[[str, Mapping[str, torch.Tensor], ConversionContext], Mapping[str, torch.Tensor]]
        | None
    ) = None

    def __post_init__(self) -> None:
        _check_name("layer mapper", self.name)
        _check_name("layer kind", self.layer_kind)
        _check_priority("layer mapper", self.name, self.priority)
        if (self.convert is None) == (self.keep_reason is None):
            raise ValueError(
                f"layer mapper {self.name!r}: give exactly one of convert= or keep_reason="
            )
        if (self.state_dict_layers is None) != (self.convert_state_dict is None):
            raise ValueError(
                f"layer mapper {self.name!r}: state_dict_layers and convert_state_dict go together"
            )


@dataclass(frozen=True)
class StateDictShard:
    """One shard of a checkpoint too large to hold at once: ``load`` reads its tensors on demand.

    Shards are quantized one at a time through the state-dict path, so memory stays bounded by
    the largest shard. An adapter must put every tensor of one layer (and of a module that reads
    its children's weights) into the same shard.
    """

    name: str
    load: Callable[[], Mapping[str, torch.Tensor]]
    size: int = 0  # bytes on disk, for progress messages


@dataclass(frozen=True)
class AdaptedInput:
    """What an input adapter hands to the orchestration: exactly one of a module, a state dict,
    or a sequence of state-dict shards (a sharded checkpoint).

    ``finalize`` (module input only) is called as ``finalize(quantized, manifest)`` on the
    quantized copy, and on a model :func:`quantcore.load` rebuilt from this input as a skeleton,
    so an adapter for a library's models can annotate them for that library (the transformers
    plugin writes the ``quantization_config`` that ``save_pretrained`` saves).
    ``write_companions`` (file input) is called by :func:`quantcore.quantize_to_file` as
    ``write_companions(written_files, manifest)`` and returns the files it wrote next to them
    (the transformers plugin copies a model folder's ``config.json``, so the output folder loads
    with ``from_pretrained``). ``folder_suffix`` is the suffix of the file written into a folder
    output (None: follow the input); ``stored_tensors(state_dict, manifest)`` gives the tensors
    as the output stores them (the transformers plugin stores quantized integer tensors flat, so
    a float model refuses them): :func:`quantcore.load` views a flat quantized tensor back to the
    shape its layer has.
    """

    module: nn.Module | None = None
    state_dict: Mapping[str, torch.Tensor] | None = None
    description: str = ""
    notes: tuple[str, ...] = ()
    shards: tuple[StateDictShard, ...] | None = None
    finalize: Callable[[nn.Module, Manifest], None] | None = None
    write_companions: Callable[[Sequence[Path], Manifest], Sequence[Path]] | None = None
    folder_suffix: str | None = None
    stored_tensors: (
        Callable[[Mapping[str, torch.Tensor], Manifest], Mapping[str, torch.Tensor]] | None
    ) = None

    def __post_init__(self) -> None:
        if self.shards is not None:
            object.__setattr__(self, "shards", tuple(self.shards))
        given = [x is not None for x in (self.module, self.state_dict, self.shards)]
        if sum(given) != 1:
            raise ValueError("AdaptedInput needs exactly one of module=, state_dict= or shards=")


@dataclass(frozen=True)
class InputAdapter:
    """Turns what the caller passed (a module, a state dict, a file, ...) into an AdaptedInput.

    ``description`` says what the adapter accepts; it is shown when no adapter accepts an input.
    ``explain`` (optional) says why this adapter declines a given object when that is not obvious
    (a mapping with a non-tensor value, a path with an unknown suffix); None means no comment.
    """

    name: str
    accepts: Callable[[object], bool]
    adapt: Callable[[object], AdaptedInput]
    priority: int = 0
    description: str = ""
    explain: Callable[[object], str | None] | None = None

    def __post_init__(self) -> None:
        _check_name("input adapter", self.name)
        _check_priority("input adapter", self.name, self.priority)


@dataclass(frozen=True)
class KernelRequest:
    """What a kernel backend is asked to serve: one quantized layer on one device."""

    op: str
    weight: QuantizedWeight
    bias: torch.Tensor | None
    activation: ActivationSpec | None
    device: torch.device
    options: Mapping[str, Any] = field(default_factory=dict)


def _always(_: object = None) -> bool:
    return True


@runtime_checkable
class PackedWeightKernel(Protocol):
    """A prepared kernel that keeps its own packed copy of the weight and can give the plain
    tensors back from it.

    Packed GEMM weights are as large as the plain ones; holding both doubles a layer's memory at
    run time. A quantized layer whose kernel has this shape calls ``release_plain_weight()``
    after each call until it returns True (the kernel then holds no reference to the plain
    weight data: it has packed what it needs, or can rebuild it), drops its own plain ``data``
    tensor, and asks ``plain_weight()`` for it whenever it is read (state dict, saving, moves,
    pickling).

    A kernel that runs some calls where the layer's own code does not run per call (as one op
    of a ``torch.compile`` graph, :func:`quantcore.plugin.call_in_graph`) may have an
    ``after_graph_call`` attribute, None by default: quantcore's layers set it to a function
    that makes the same ``release_plain_weight()`` check, and ``call_in_graph``'s op calls it
    after each call it runs.
    """

    def release_plain_weight(self) -> bool: ...

    def plain_weight(self) -> QuantizedWeight: ...


@dataclass(frozen=True)
class KernelBackend:
    """An implementation of one operation ("linear", ...) for one weight format.

    ``prepare`` receives the request and returns the callable that runs the op (it may pre-pack
    weights). The backend with ``reference=True`` is the always-available correctness oracle
    (exactly one per op and format, unless the op's layers are their own: ``layer_reference``);
    among the others the highest ``priority`` that is available and supports the request wins.
    """

    name: str
    op: str
    weight_format: str
    prepare: Callable[[KernelRequest], Callable[..., Any]]
    is_available: Callable[[], bool] = _always
    supports: Callable[[KernelRequest], bool] = _always
    priority: int = 0
    reference: bool = False
    description: str = ""
    # True for an op whose layers compute it themselves when no backend serves a call (the
    # built-in "recurrent" op: the quantized RNN's step loop over its linear kernels). That code
    # is the op's reference, so no reference=True backend is registered for it.
    layer_reference: bool = False
    # Activations (names of quantcore.plugin.FUSABLE_ACTIVATIONS) this backend applies to the
    # op's output itself when the request's options carry ``fused_activation``; for any other,
    # the option is left out of the request it gets and the layer applies the activation.
    fused_activations: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.reference and self.layer_reference:
            raise ValueError(
                f"kernel backend {self.name!r}: reference=True and layer_reference=True exclude "
                "each other (the reference is a backend, or the layer's own code)"
            )
        _check_name("kernel backend", self.name)
        _check_name("kernel op", self.op)
        _check_name("weight format", self.weight_format)
        _check_priority("kernel backend", self.name, self.priority)


@dataclass(frozen=True)
class Registry:
    """Everything the loaded plugins provide, validated, with who provided it.

    ``providers`` maps (kind, name) to a description of the plugin that registered it;
    ``provided`` maps a plugin's name to what it registered (kind -> names).
    """

    schemes: Mapping[str, Scheme]
    observers: Mapping[str, Observer]
    layer_mappers: tuple[LayerMapper, ...]
    input_adapters: tuple[InputAdapter, ...]
    kernel_backends: tuple[KernelBackend, ...]
    providers: Mapping[tuple[str, str], str]
    provided: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)

    def provider(self, kind: str, name: str) -> str:
        return self.providers.get((kind, name), "<unknown>")

    def scheme(self, name: str | torch.dtype) -> Scheme:
        """The scheme a user's ``dtype`` names: a scheme name or alias (any case), a torch dtype
        a scheme declares (``torch.qint8``, or its text ``"torch.qint8"``)."""
        key = str(name).strip().lower()
        for scheme in self.schemes.values():
            if key in scheme.names():
                return scheme
        torch_names = {str(d): s.name for s in self.schemes.values() for d in s.torch_dtypes}
        hint = ""
        if key.startswith("torch."):
            listed = ", ".join(f"{d} ({n})" for d, n in sorted(torch_names.items()))
            hint = f"torch dtypes the loaded schemes accept: {listed or 'none'}"
        raise UnknownSchemeError(
            str(name),
            {n: self.provider("scheme", n) for n in self.schemes},
            {n: s.aliases for n, s in self.schemes.items()},
            hint,
        )

    def default_scheme(self) -> Scheme:
        """The scheme used when no dtype is given: the one a plugin marks ``default=True``."""
        for scheme in self.schemes.values():
            if scheme.default:
                return scheme
        raise UnknownSchemeError(
            "",
            {n: self.provider("scheme", n) for n in self.schemes},
            {n: s.aliases for n, s in self.schemes.items()},
            "no loaded scheme is marked default=True; pass dtype= (or set dtype in a "
            "configuration file)",
        )

    def observer(self, name: str) -> Observer:
        try:
            return self.observers[name]
        except KeyError:
            raise UnknownObserverError(name, self.observers) from None

    def kernel_candidates(self, op: str, weight_format: str) -> tuple[KernelBackend, ...]:
        """Backends for (op, format), preferred first; the reference backend always last."""
        matching = [
            b for b in self.kernel_backends if b.op == op and b.weight_format == weight_format
        ]
        return tuple(sorted(matching, key=lambda b: (b.reference, -b.priority, b.name)))
