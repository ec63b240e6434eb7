"""SmoothQuant-style outlier smoothing (arXiv 2211.10438) from calibration inputs.

A linear layer whose input has a few channels of huge range loses the other channels to per-token
activation quantization. Dividing input channel j by ``s_j = max|X_j|^a / max|W_j|^(1-a)`` and
multiplying the weight's column j by ``s_j`` computes the same function with flatter activations.
The division is folded into the layer that produces the input, so nothing is added at run time:
into a normalization's weight and bias (``y = n(x) * weight + bias``), or into a linear layer's
output rows. That is only exact when the producer's output goes to these linear layers and
nowhere else (a residual connection reading it would change), which a traced calibration pass
checks: every torch call that reads the producer's output is seen (``TorchFunctionMode``).

Each fold is kept only where it lowers the quantized error of its linear layers on the calibration
inputs. The caller's model is not modified: the folds go into a copy that shares every other
module and tensor with it (quantize() then copies that).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from quantcore.assemble import own_copy
from quantcore.calibration import Batch
from quantcore.config import QuantizeConfig

if TYPE_CHECKING:
    from quantcore.plugin_manager import QuantcorePluginManager

logger = logging.getLogger("quantcore")


def _plain_linear(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Linear)
        and type(module).forward is nn.Linear.forward
        and isinstance(module._parameters.get("weight"), nn.Parameter)
    )


def _norm_like(module: nn.Module) -> bool:
    """A leaf with a 1-D weight (and maybe bias) per channel: LayerNorm, RMSNorm and the like.
    Whether its output really scales with its weight is checked on real inputs before folding."""
    weight = module._parameters.get("weight")
    bias = module._parameters.get("bias")
    return (
        not module._modules
        and isinstance(weight, nn.Parameter)
        and weight.dim() == 1
        and (bias is None or (isinstance(bias, nn.Parameter) and bias.shape == weight.shape))
    )


@dataclass
class _Observation:
    """What one traced pass and the channel statistics say about the graph."""

    channel_max: dict[str, torch.Tensor] = field(default_factory=dict)  # linear -> max|x_j|
    readers: dict[str, set[str]] = field(default_factory=dict)  # producer -> linears reading it
    sources: dict[str, set[str | None]] = field(default_factory=dict)  # linear -> its producers
    other_uses: set[str] = field(default_factory=set)  # producers read by anything else
    samples: dict[str, torch.Tensor] = field(default_factory=dict)  # producer -> input rows


class _ReadTracker(TorchFunctionMode):
    """Marks a producer whose output any torch call reads, except the consumer linears' own
    ``F.linear`` on it."""

    def __init__(self, observation: _Observation) -> None:
        super().__init__()
        self.observation = observation
        self.tracked: dict[int, tuple[str, torch.Tensor]] = {}  # strong refs: ids stay unique
        self.in_linear = 0
        self.active = False
        self.paused = False  # quantcore's own hooks reading the tensors are no use

    def __torch_function__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.tracked and not self.paused:
            own_matmul = func is F.linear and self.in_linear
            for i, leaf in enumerate(tree_leaves((list(args), kwargs))):
                found = self.tracked.get(id(leaf)) if isinstance(leaf, torch.Tensor) else None
                if found is None or found[1] is not leaf or (own_matmul and i == 0):
                    continue
                if any(isinstance(t, torch.Tensor) for t in tree_leaves(out)):
                    self.observation.other_uses.add(found[0])
        return out


def _observe(model: nn.Module, batches: Sequence[Batch]) -> _Observation:
    observation = _Observation()
    modules = dict(model.named_modules())
    linears = [n for n, m in modules.items() if _plain_linear(m)]
    producers = [n for n, m in modules.items() if _plain_linear(m) or _norm_like(m)]
    tracker = _ReadTracker(observation)
    handles = []

    def before_linear(name: str, x: torch.Tensor) -> None:
        tracker.paused = True
        amax = x.detach().abs().reshape(-1, x.shape[-1]).amax(0).float()
        tracker.paused = False
        previous = observation.channel_max.get(name)
        observation.channel_max[name] = amax if previous is None else torch.maximum(previous, amax)
        tracker.in_linear += 1
        if not tracker.active:
            return
        found = tracker.tracked.get(id(x))
        producer = found[0] if found is not None and found[1] is x else None
        observation.sources.setdefault(name, set()).add(producer)
        if producer is not None:
            observation.readers.setdefault(producer, set()).add(name)

    for name in linears:
        m = modules[name]
        handles.append(m.register_forward_pre_hook(lambda _, a, n=name: before_linear(n, a[0])))
        handles.append(m.register_forward_hook(lambda *_: _leave_linear(tracker)))
    for name in producers:
        handles.append(
            modules[name].register_forward_hook(
                lambda _, a, out, n=name: _track(tracker, observation, n, a, out)
            )
        )
    try:
        with torch.no_grad():
            for index, batch in enumerate(batches):
                if index == 0:
                    tracker.active = True
                    with tracker:
                        batch(model)
                    tracker.active = False
                    tracker.tracked.clear()
                else:
                    batch(model)
    finally:
        for handle in handles:
            handle.remove()
    return observation


def _leave_linear(tracker: _ReadTracker) -> None:
    tracker.in_linear -= 1


def _track(
    tracker: _ReadTracker, observation: _Observation, name: str, args: Any, out: Any
) -> None:
    if not isinstance(out, torch.Tensor) or not tracker.active:
        return
    tracker.tracked[id(out)] = (name, out)
    if name not in observation.samples and args and isinstance(args[0], torch.Tensor):
        tracker.paused = True
        x = args[0].detach()
        observation.samples[name] = x.reshape(-1, x.shape[-1])[:64].clone()
        tracker.paused = False


@dataclass(frozen=True)
class _Fold:
    producer: str
    consumers: tuple[str, ...]
    scales: torch.Tensor  # s_j: input channel j of the consumers is divided by it


def _folds(model: nn.Module, observation: _Observation, alpha: float) -> list[_Fold]:
    modules = dict(model.named_modules())
    folds = []
    for producer, readers in sorted(observation.readers.items()):
        consumers = tuple(sorted(readers))
        if producer in observation.other_uses or any(
            observation.sources.get(c) != {producer} for c in consumers
        ):
            continue
        weights = [modules[c].weight.detach() for c in consumers]
        w_max = torch.cat([w.abs() for w in weights]).amax(0).float()
        x_max = observation.channel_max[consumers[0]]
        scales = (x_max.clamp(min=1e-5) ** alpha / w_max.clamp(min=1e-5) ** (1 - alpha)).clamp(
            min=1e-5
        )
        scales = torch.where(x_max > 0, scales, torch.ones_like(scales))
        folds.append(_Fold(producer, consumers, scales))
    return folds


def _scaled_copy(
    module: nn.Module, rows: torch.Tensor | None, columns: torch.Tensor | None
) -> nn.Module:
    """A copy of a leaf module with its weight (and bias) divided per output row by ``rows``, or
    its weight multiplied per input column by ``columns``; everything else shared."""
    new = own_copy(module)
    new._parameters = OrderedDict(module._parameters)
    weight, bias = module._parameters["weight"], module._parameters.get("bias")
    assert weight is not None
    with torch.no_grad():
        if rows is not None:
            shape = (-1,) + (1,) * (weight.dim() - 1)
            new._parameters["weight"] = nn.Parameter(
                weight / rows.reshape(shape).to(weight.dtype), weight.requires_grad
            )
            if bias is not None:
                new._parameters["bias"] = nn.Parameter(
                    bias / rows.to(bias.dtype), bias.requires_grad
                )
        if columns is not None:
            new._parameters["weight"] = nn.Parameter(
                weight * columns.to(weight.dtype), weight.requires_grad
            )
    return new


def _apply(model: nn.Module, folds: Sequence[_Fold]) -> nn.Module:
    """A copy of ``model`` with ``folds`` applied: changed modules copied, the path to them
    copied shallowly, everything else shared."""
    modules = dict(model.named_modules())
    replaced: dict[int, nn.Module] = {}
    for fold in folds:
        replaced[id(modules[fold.producer])] = _scaled_copy(
            modules[fold.producer], fold.scales, None
        )
        for consumer in fold.consumers:
            replaced[id(modules[consumer])] = _scaled_copy(modules[consumer], None, fold.scales)
    memo: dict[int, nn.Module] = {}

    def visit(module: nn.Module) -> nn.Module:
        if id(module) in replaced:
            return replaced[id(module)]
        if id(module) not in memo:
            children = OrderedDict(
                (k, None if c is None else visit(c)) for k, c in module._modules.items()
            )
            new = module
            if any(children[k] is not c for k, c in module._modules.items()):
                new = own_copy(module)
                new._modules = children
            memo[id(module)] = new
        return memo[id(module)]

    return visit(model)


def _scales_exactly(model: nn.Module, fold: _Fold, sample: torch.Tensor | None) -> bool:
    """Whether the folded producer's output is the original's divided by the scales (a norm
    computing ``x * (1 + weight)``, as Gemma's does, is not)."""
    if sample is None:
        return False
    original = model.get_submodule(fold.producer)
    folded = _scaled_copy(original, fold.scales, None)
    with torch.no_grad():
        expected = original(sample) / fold.scales.to(sample.dtype)
        got = folded(sample)
    return bool(torch.allclose(got, expected, rtol=1e-3, atol=1e-5 * float(expected.abs().max())))


def smooth_model(
    model: nn.Module,
    batches: Sequence[Batch],
    config: QuantizeConfig,
    manager: QuantcorePluginManager,
) -> tuple[nn.Module, tuple[str, ...]]:
    """The smoothed copy (or ``model`` itself when nothing helps) and one report line per fold
    tried: kept with the error it saves, or why not."""
    registry = manager.registry()
    scheme = registry.scheme(config.dtype) if config.dtype else registry.default_scheme()
    spec = scheme.layer_specs.get("linear")
    if spec is None or spec.activation is None:
        return model, (f"not applied: scheme {scheme.name!r} quantizes no linear activations",)
    observation = _observe(model, batches)
    folds, lines = [], []
    for fold in _folds(model, observation, config.smooth_alpha):
        if _scales_exactly(model, fold, observation.samples.get(fold.producer)):
            folds.append(fold)
        else:
            lines.append(f"{fold.producer}: not folded (its output does not scale with its weight)")
    if not folds:
        lines.append(
            "no fold applies: no linear layer reads the output of a normalization or linear "
            "layer that nothing else reads"
        )
        return model, tuple(lines)
    kept = _helpful(model, folds, batches, config, manager, lines)
    return (_apply(model, kept) if kept else model), tuple(lines)


def _helpful(
    model: nn.Module,
    folds: Sequence[_Fold],
    batches: Sequence[Batch],
    config: QuantizeConfig,
    manager: QuantcorePluginManager,
    lines: list[str],
) -> list[_Fold]:
    """The folds that lower the quantized error of their linear layers (root of the summed
    squared relative errors), each measured on the calibration inputs."""
    from quantcore.api import quantize
    from quantcore.compare import compare

    inner = dataclasses.replace(config, smooth=False, max_error=None)
    smoothed = _apply(model, folds)
    errors = []
    for candidate in (model, smoothed):
        quantized = quantize(candidate, config=inner, plugin_manager=manager, output="module")
        errors.append(
            {s.name: s.relative_l2 for s in compare(candidate, quantized, batches).layers}
        )
    kept = []
    for fold in folds:
        before, after = (sum(e.get(c, 0.0) ** 2 for c in fold.consumers) ** 0.5 for e in errors)
        ratio = float(fold.scales.max() / fold.scales.min())
        verdict = "kept" if after < before else "not kept"
        lines.append(
            f"{fold.producer} -> {', '.join(fold.consumers)}: {verdict} (alpha "
            f"{config.smooth_alpha:g}, scales spread {ratio:.3g}x; their error {before:.4g} -> "
            f"{after:.4g})"
        )
        if after < before:
            kept.append(fold)
    logger.info("smoothing: %d of %d folds kept", len(kept), len(folds))
    return kept
