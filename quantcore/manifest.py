"""What a quantized model records about itself so it can be saved and rebuilt: per quantized
layer, the mapper and scheme that built it, the layer spec, and the shape and dtype of every
quantized weight tensor. Plain data, serialized as JSON (safetensors headers hold str -> str)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from quantcore.errors import IncompatibleFormatError, SerializationError
from quantcore.specs import ActivationSpec, Granularity, LayerSpec, QuantizedWeight, WeightSpec

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


def weight_spec_to_dict(spec: WeightSpec) -> dict[str, Any]:
    return {
        "granularity": spec.granularity.value,
        "symmetric": spec.symmetric,
        "observer": spec.observer,
        "axis": spec.axis,
    }


def weight_spec_from_dict(raw: Mapping[str, Any]) -> WeightSpec:
    return WeightSpec(
        Granularity(raw["granularity"]), bool(raw["symmetric"]), raw["observer"], int(raw["axis"])
    )


def layer_spec_to_dict(spec: LayerSpec) -> dict[str, Any]:
    act = spec.activation
    return {
        "weight": weight_spec_to_dict(spec.weight),
        "activation": None
        if act is None
        else {"granularity": act.granularity.value, "symmetric": act.symmetric, "bits": act.bits},
        "granularity": spec.describe(),  # human-readable, for `quantcore inspect`
        "reason": spec.reason,
    }


def layer_spec_from_dict(raw: Mapping[str, Any]) -> LayerSpec:
    act = raw["activation"]
    activation = (
        None
        if act is None
        else ActivationSpec(
            Granularity(act["granularity"]),
            bool(act["symmetric"]),
            None if act.get("bits") is None else int(act["bits"]),
        )
    )
    return LayerSpec(weight_spec_from_dict(raw["weight"]), activation, str(raw.get("reason", "")))


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
