"""What a quantized model records about itself so it can be saved and rebuilt: per quantized
layer, the mapper and scheme that built it, the layer spec, and the shape and dtype of every
quantized weight tensor. Plain data, serialized as JSON (safetensors headers hold str -> str)."""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from types import UnionType
from typing import Any, TypeVar, Union

import torch
from torch import nn

from quantcore.errors import IncompatibleFormatError, SerializationError
from quantcore.specs import ActivationSpec, LayerSpec, QuantizedWeight, WeightSpec

FORMAT_NAME = "quantcore"
# Bump when a file written by this version cannot be read correctly by older readers.
FORMAT_VERSION = 1

_ROLES = ("data", "scale", "zero_point")


@dataclass(frozen=True)
class TensorRecord:
    shape: tuple[int, ...]
    dtype: torch.dtype

    def empty(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.empty(self.shape, dtype=self.dtype, device=device)


@dataclass(frozen=True)
class WeightRecord:
    """One ``ctx.quantize_weight`` call of a layer: enough to allocate its result again."""

    format: str
    spec: WeightSpec | None
    source_shape: tuple[int, ...]
    tensors: Mapping[str, TensorRecord]  # role ("data", "scale", "zero_point") -> shape/dtype

    @classmethod
    def of(cls, source_shape: Sequence[int], weight: QuantizedWeight) -> WeightRecord:
        tensors = {
            role: TensorRecord(tuple(t.shape), t.dtype)
            for role, t in zip(_ROLES, (weight.data, weight.scale, weight.zero_point), strict=True)
            if t is not None
        }
        return cls(weight.format, weight.spec, tuple(source_shape), tensors)

    def empty(self, device: torch.device | str = "cpu") -> QuantizedWeight:
        """A QuantizedWeight of the recorded shapes, values uninitialized (filled by loading)."""
        made = {role: rec.empty(device) for role, rec in self.tensors.items()}
        return QuantizedWeight(
            self.format, made["data"], made.get("scale"), made.get("zero_point"), self.spec
        )


@dataclass(frozen=True)
class LayerRecord:
    """One quantized layer, as :func:`quantcore.load` needs it to build the layer again."""

    name: str
    layer_kind: str
    mapper: str
    scheme: str
    weight_format: str
    spec: LayerSpec
    weights: tuple[WeightRecord, ...]
    layer_type: str = ""


@dataclass(frozen=True)
class Manifest:
    """Everything quantcore writes next to the tensors of a quantized model."""

    scheme: str
    layers: tuple[LayerRecord, ...]
    quantcore_version: str = ""
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT_NAME,
                "format_version": self.format_version,
                "quantcore_version": self.quantcore_version,
                "scheme": self.scheme,
                "layers": [_layer_to_dict(layer) for layer in self.layers],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, source: str = "the file") -> Manifest:
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
                raise ValueError("not a quantcore manifest")
            version = int(raw["format_version"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SerializationError(f"{source} has unreadable quantcore metadata: {exc}") from exc
        writer = raw.get("quantcore_version") or "an unknown version"
        if version > FORMAT_VERSION:
            raise IncompatibleFormatError(
                f"{source} was written by quantcore {writer} in file format version {version}; "
                f"this quantcore reads format versions up to {FORMAT_VERSION}. Upgrade quantcore "
                "(pip install -U quantcore) to read it."
            )
        try:
            layers = tuple(_layer_from_dict(item) for item in raw["layers"])
            return cls(str(raw["scheme"]), layers, str(writer), version)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SerializationError(
                f"{source} has corrupt quantcore metadata ({type(exc).__name__}: {exc})"
            ) from exc

    def merged(self, other: Manifest) -> Manifest:
        if other.scheme != self.scheme:
            raise SerializationError(
                f"cannot merge files quantized with {self.scheme!r} and {other.scheme!r}"
            )
        return Manifest(self.scheme, self.layers + other.layers, self.quantcore_version)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# Every dtype torch has, by name: a file's dtype name is looked up here, never with getattr(torch,
# name), which could import torch submodules on a crafted name.
_DTYPES: dict[str, torch.dtype] = {
    _dtype_name(v): v for v in vars(torch).values() if isinstance(v, torch.dtype)
}


def _dtype(name: str) -> torch.dtype:
    value = _DTYPES.get(name) if isinstance(name, str) else None
    if value is None:
        raise ValueError(f"unknown dtype {name!r}")
    return value


SpecT = TypeVar("SpecT", WeightSpec, ActivationSpec)


def _field_types(cls: type) -> dict[str, tuple[type, ...]]:
    """Each field's types, None left out (``int | None`` -> ``(int,)``)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint) if typing.get_origin(hint) in (Union, UnionType) else (hint,)
        out[f.name] = tuple(a for a in args if a is not type(None))
    return out


def spec_to_dict(spec: WeightSpec | ActivationSpec) -> dict[str, Any]:
    """Every field of a spec as JSON (enums by value): a new field is written with no code
    here, and files written before it read back with its default."""
    return {
        f.name: value.value if isinstance(value, Enum) else value
        for f in dataclasses.fields(spec)
        for value in [getattr(spec, f.name)]
    }


def _decode(value: object, types: tuple[type, ...], name: str) -> object:
    if value is None:
        return None
    kind = types[0]
    if issubclass(kind, Enum):
        return kind(value)
    if kind is bool or kind is str:
        if not isinstance(value, kind):
            raise ValueError(f"{name} must be a {kind.__name__}, not {value!r}")
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"{name} must be an {kind.__name__}, not {value!r}")


def spec_from_dict(cls: type[SpecT], raw: Mapping[str, Any]) -> SpecT:
    """The spec a :func:`spec_to_dict` dict describes; absent fields take their defaults (files
    written before the field existed), unknown keys are ignored."""
    values = {
        name: _decode(raw[name], types, name)
        for name, types in _field_types(cls).items()
        if name in raw
    }
    return cls(**values)  # type: ignore[arg-type]


def weight_spec_to_dict(spec: WeightSpec) -> dict[str, Any]:
    return spec_to_dict(spec)


def weight_spec_from_dict(raw: Mapping[str, Any]) -> WeightSpec:
    return spec_from_dict(WeightSpec, raw)


def layer_spec_to_dict(spec: LayerSpec) -> dict[str, Any]:
    act = spec.activation
    return {
        "weight": spec_to_dict(spec.weight),
        "activation": None if act is None else spec_to_dict(act),
        "granularity": spec.describe(),  # human-readable, for `quantcore inspect`
        "reason": spec.reason,
    }


def layer_spec_from_dict(raw: Mapping[str, Any]) -> LayerSpec:
    act = raw["activation"]
    activation = None if act is None else spec_from_dict(ActivationSpec, act)
    return LayerSpec(
        spec_from_dict(WeightSpec, raw["weight"]), activation, str(raw.get("reason", ""))
    )


def _layer_to_dict(layer: LayerRecord) -> dict[str, Any]:
    return {
        "name": layer.name,
        "layer_kind": layer.layer_kind,
        "layer_type": layer.layer_type,
        "mapper": layer.mapper,
        "scheme": layer.scheme,
        "weight_format": layer.weight_format,
        "spec": layer_spec_to_dict(layer.spec),
        "weights": [
            {
                "format": w.format,
                "spec": None if w.spec is None else weight_spec_to_dict(w.spec),
                "source_shape": list(w.source_shape),
                "tensors": {
                    role: {"shape": list(t.shape), "dtype": _dtype_name(t.dtype)}
                    for role, t in w.tensors.items()
                },
            }
            for w in layer.weights
        ],
    }


def _layer_from_dict(raw: Mapping[str, Any]) -> LayerRecord:
    weights = tuple(
        WeightRecord(
            str(w["format"]),
            None if w["spec"] is None else weight_spec_from_dict(w["spec"]),
            tuple(int(d) for d in w["source_shape"]),
            {
                str(role): TensorRecord(tuple(int(d) for d in t["shape"]), _dtype(t["dtype"]))
                for role, t in w["tensors"].items()
            },
        )
        for w in raw["weights"]
    )
    for w in weights:
        if "data" not in w.tensors:
            raise ValueError(f"layer {raw['name']!r}: a weight record has no data tensor")
    return LayerRecord(
        name=str(raw["name"]),
        layer_kind=str(raw["layer_kind"]),
        mapper=str(raw["mapper"]),
        scheme=str(raw["scheme"]),
        weight_format=str(raw["weight_format"]),
        spec=layer_spec_from_dict(raw["spec"]),
        weights=weights,
        layer_type=str(raw.get("layer_type", "")),
    )


MANIFEST_ATTRIBUTE = "_quantcore_manifest"


def attach_manifest(module: nn.Module, manifest: Manifest) -> None:
    """Remember on a quantized root module what quantcore.save() must write for it."""
    module.__dict__[MANIFEST_ATTRIBUTE] = manifest


def manifest_of(module: nn.Module) -> Manifest | None:
    """The manifest of a module returned by quantize() or load(), else None."""
    found = module.__dict__.get(MANIFEST_ATTRIBUTE)
    return found if isinstance(found, Manifest) else None


def quantcore_version() -> str:
    from importlib_metadata import PackageNotFoundError, version

    try:
        return version("quantcore")
    except PackageNotFoundError:
        return "0.0.0+unknown"
