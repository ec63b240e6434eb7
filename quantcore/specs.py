"""Plain, frozen descriptions of *how* to quantize: shared vocabulary between schemes, observers,
layer mappers and kernel backends. Nothing here knows a concrete number format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import torch


class Granularity(str, Enum):
    """Which elements share one scale (and zero point)."""

    PER_TENSOR = "per_tensor"
    PER_CHANNEL = (
        "per_channel"  # one scale per slice along ``axis`` (output channel, embedding row)
    )
    # weights: one scale per group of ``group_size`` consecutive elements of a slice along
    # ``axis`` (the input axis of a linear weight), as torchao's block_size (1, group_size)
    PER_GROUP = "per_group"
    PER_TOKEN = "per_token"  # activations: one scale per row of the flattened input
    NONE = "none"  # the format needs no scale (fp16 weights)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class WeightSpec:
    """How a layer's weight is quantized ahead of time.

    ``axis`` is the output axis (one scale per slice along it); ``group_size``, required by
    ``PER_GROUP`` and refused by the others, splits each slice (flattened, in memory order: the
    input axis of a linear weight) into groups of that many elements with a scale each.
    """

    granularity: Granularity = Granularity.PER_CHANNEL
    symmetric: bool = True
    observer: str | None = "minmax"
    axis: int = 0
    group_size: int | None = None

    def __post_init__(self) -> None:
        grouped = self.granularity is Granularity.PER_GROUP
        if grouped and (
            isinstance(self.group_size, bool)
            or not isinstance(self.group_size, int)
            or self.group_size < 1
        ):
            raise ValueError(
                f"per_group weights need a positive group_size, not {self.group_size!r}"
            )
        if not grouped and self.group_size is not None:
            raise ValueError(
                f"group_size={self.group_size} goes with granularity per_group, not "
                f"{self.granularity.value}"
            )

    def describe(self) -> str:
        if self.granularity is Granularity.NONE:
            return "unscaled"
        kind = "symmetric" if self.symmetric else "asymmetric"
        if self.granularity is Granularity.PER_GROUP:
            return f"per_group({self.group_size}), {kind}"
        return f"{self.granularity.value}, {kind}"


@dataclass(frozen=True)
class ActivationSpec:
    """How a layer's input is quantized on the fly at every call."""

    granularity: Granularity = Granularity.PER_TOKEN
    symmetric: bool = True
    # Integer width of the quantized input. None lets the format's kernels use the widest width
    # they compute exactly on the layer's device (some CPUs' int8 dot products saturate at 8 bits).
    bits: int | None = None

    def __post_init__(self) -> None:
        if self.bits is not None and not 2 <= self.bits <= 16:
            raise ValueError(f"activation bits must be between 2 and 16 or None, not {self.bits}")

    def describe(self) -> str:
        kind = "symmetric" if self.symmetric else "asymmetric"
        width = "" if self.bits is None else f", {self.bits}-bit"
        return f"{self.granularity.value}, {kind}{width}"


@dataclass(frozen=True)
class LayerSpec:
    """A scheme's decision for one layer kind. ``activation=None`` means weight-only.

    ``keep_reason`` set: layers of this kind stay float by default (reported as kept, with this
    reason); a per-layer override naming the scheme (``dtype=``) quantizes them with this spec.
    """

    weight: WeightSpec
    activation: ActivationSpec | None = None
    reason: str = ""
    keep_reason: str | None = None

    def describe(self) -> str:
        act = self.activation.describe() if self.activation else "float (weight-only)"
        return f"weights {self.weight.describe()}; activations {act}"


@dataclass(frozen=True)
class QuantParams:
    """What an observer computes: ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``.

    ``scale`` (and ``zero_point``) hold one value for per-tensor parameters, or one per slice along
    the requested axis. ``zero_point`` is None for symmetric parameters.
    """

    scale: torch.Tensor
    zero_point: torch.Tensor | None
    qmin: int
    qmax: int


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A quantized weight as plain tensors, so it saves with torch.save and safetensors alike.

    ``format`` names the number format ("int8", "fp16", a plugin's own); kernel backends are
    registered per (operation, format).
    """

    format: str
    data: torch.Tensor
    scale: torch.Tensor | None = None
    zero_point: torch.Tensor | None = None
    spec: WeightSpec | None = None
    # the scheme's way back to float values; set by ConversionContext.quantize_weight
    dequantizer: Callable[[QuantizedWeight], torch.Tensor] | None = field(default=None, repr=False)

    def dequantize(self) -> torch.Tensor:
        """The float values this weight stands for (a new tensor)."""
        if self.dequantizer is None:
            raise ValueError(f"this {self.format} weight does not know its scheme's dequantizer")
        return self.dequantizer(self)

    def tensors(self, name: str = "weight") -> dict[str, torch.Tensor]:
        """The state-dict entries for this weight, named after ``name``."""
        out = {name: self.data}
        if self.scale is not None:
            out[f"{name}_scale"] = self.scale
        if self.zero_point is not None:
            out[f"{name}_zero_point"] = self.zero_point
        return out

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())
