"""The report every quantize() call returns: what was quantized, kept or skipped, and why."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from quantcore.config import QuantizeConfig

LayerStatus = Literal["quantized", "kept", "skipped"]


@dataclass(frozen=True)
class LayerReport:
    name: str
    layer_type: str
    status: LayerStatus
    layer_kind: str | None = None
    scheme: str | None = None
    granularity: str | None = None
    kernel: str | None = None
    mapper: str | None = None
    reason: str | None = None
    bytes_before: int = 0
    bytes_after: int = 0
    notes: tuple[str, ...] = ()
    override: str | None = None  # the per-layer override(s) that applied, as described in config
    requested: bool = False  # skipped because the caller asked (include/exclude/override skip)


@dataclass(frozen=True)
class KeptForAccuracy:
    """A layer the accuracy budget kept back (float, or the fallback scheme)."""

    name: str
    sensitivity: float  # output error with only this layer quantized
    fallback: str | None = None  # the scheme it got instead; None: float


@dataclass(frozen=True)
class AccuracyReport:
    """What calibration measured: the output error before and after the budget, the layers kept
    back, and how many forward passes it took (see docs/accuracy.md)."""

    metric: str
    batches: int
    error: float  # of the returned model, measured on the calibration inputs
    error_all_quantized: float
    max_error: float | None = None
    kept: tuple[KeptForAccuracy, ...] = ()
    forward_passes: int = 0
    smoothed: tuple[str, ...] = ()  # one line per smoothed layer group

    @property
    def met(self) -> bool:
        return self.max_error is None or self.error <= self.max_error

    def lines(self) -> list[str]:
        budget = "" if self.max_error is None else f" (budget {self.max_error:g}: "
        if budget:
            budget += "met)" if self.met else "NOT met)"
        out = [
            f"accuracy: {self.metric} error {self.error:.5g}{budget} on {self.batches} "
            f"calibration batch(es); {self.error_all_quantized:.5g} with every layer quantized; "
            f"{self.forward_passes} forward passes"
        ]
        out += [f"smoothed: {line}" for line in self.smoothed]
        return out


@dataclass(frozen=True)
class QuantizationReport:
    scheme: str
    input_description: str
    layers: tuple[LayerReport, ...]
    size_before: int
    size_after: int
    notes: tuple[str, ...] = ()
    plugins: tuple[str, ...] = field(default=())
    config: QuantizeConfig | None = (
        None  # the effective configuration and where each value came from
    )
    accuracy: AccuracyReport | None = None  # with calibration inputs only

    @property
    def quantized(self) -> tuple[LayerReport, ...]:
        return tuple(layer for layer in self.layers if layer.status == "quantized")

    @property
    def skipped(self) -> tuple[LayerReport, ...]:
        return tuple(layer for layer in self.layers if layer.status == "skipped")

    @property
    def kept(self) -> tuple[LayerReport, ...]:
        return tuple(layer for layer in self.layers if layer.status == "kept")

    @property
    def compression(self) -> float:
        return self.size_after / self.size_before if self.size_before else 1.0

    def __iter__(self) -> Iterator[LayerReport]:
        return iter(self.layers)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["layers"] = [asdict(layer) for layer in self.layers]
        out["config"] = self.config.to_dict() if self.config is not None else None
        out["accuracy"] = asdict(self.accuracy) if self.accuracy is not None else None
        return out

    def summary(self) -> str:
        return (
            f"{len(self.quantized)} quantized, {len(self.kept)} kept in float, "
            f"{len(self.skipped)} skipped; size {_mb(self.size_before)} -> {_mb(self.size_after)} "
            f"({self.compression:.2f}x)"
        )

    def __str__(self) -> str:
        lines = [f"quantcore report: scheme {self.scheme}, input {self.input_description}"]
        lines += [f"  note: {n}" for n in self.notes]
        if self.config is not None:
            lines += [f"  config: {line}" for line in self.config.non_default()]
        if self.accuracy is not None:
            lines += [f"  {line}" for line in self.accuracy.lines()]
        if not self.layers:
            lines.append("  (the input holds no layers with float weights)")
        name_width = min(48, max((len(layer.name) for layer in self.layers), default=6))
        type_width = min(36, max((len(layer.layer_type) for layer in self.layers), default=4))
        for layer in self.layers:
            if layer.status == "quantized":
                detail = (
                    f"{layer.granularity}; kernel {layer.kernel}"
                    if layer.kernel
                    else f"{layer.granularity}"
                )
            else:
                detail = layer.reason or ""
            extra = f" [{'; '.join(layer.notes)}]" if layer.notes else ""
            if layer.override:
                extra += f" [{layer.override}]"
            lines.append(
                f"  {layer.status:<9} {layer.name or '<root>':<{name_width}} {layer.layer_type:<{type_width}} {detail}{extra}"
            )
        lines.append(f"  {self.summary()}")
        return "\n".join(lines)


def _mb(nbytes: int) -> str:
    return f"{nbytes / 2**20:.2f} MiB"
