"""Shared checks for the layer families: every quantized layer kind must pass all of them."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Sequence
from typing import Any

import torch
from baselines import check_error
from conftest import fingerprint
from torch import nn
from torch.nn.utils.rnn import PackedSequence

import quantcore
from quantcore.plugin import QuantizedModule

__all__ = ["check_error", "check_layer", "relative_error", "tensors_of", "with_reference_kernels"]


def tensors_of(output: Any) -> list[torch.Tensor]:
    """Every tensor in a layer's output (tuples, PackedSequence), in order."""
    if isinstance(output, PackedSequence):
        return [output.data]
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in tensors_of(item)]
    return []


def relative_error(got: Any, expected: Any) -> float:
    pairs = list(zip(tensors_of(got), tensors_of(expected), strict=True))
    assert pairs, "no tensor outputs to compare"
    errors = []
    for g, e in pairs:
        assert g.shape == e.shape and g.dtype == e.dtype, (g.shape, e.shape, g.dtype, e.dtype)
        g, e = g.detach().float(), e.detach().float()
        denominator = float(e.norm())
        errors.append(float((g - e).norm()) / max(denominator, 1e-12))
    return max(errors)


def with_reference_kernels(module: nn.Module) -> nn.Module:
    """A copy of a quantized model whose layers all run their format's reference backend."""
    ref = copy.deepcopy(module)
    for m in reversed(list(ref.modules())):  # children before their containers
        if isinstance(m, QuantizedModule):
            if m._backends:
                m._backends = tuple(b for b in m._backends if b.reference)
            m._prepare_kernel()
    return ref


def _cast_floats(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_cast_floats(v, dtype) for v in value)
    return value


def check_layer(
    model: nn.Module,
    inputs: Sequence[Any],
    scheme: str,
    plugin_manager: quantcore.QuantcorePluginManager,
    *,
    kinds: dict[str, str],
    call: Callable[[nn.Module, Sequence[Any]], Any] = lambda m, inp: m(*inp),
    check_dtype: bool = True,
    overrides: Sequence[dict[str, Any]] | None = None,
) -> tuple[nn.Module, quantcore.QuantizationReport, float]:
    """Quantize ``model`` and check everything a quantized layer promises; returns the error."""
    model.eval()
    with torch.no_grad():
        expected = call(model, inputs)
    before = fingerprint(model)
    result = quantcore.quantize(model, scheme, plugin_manager=plugin_manager, overrides=overrides)
    assert fingerprint(model) == before, "the caller's model was modified"
    quantized = result.module
    assert quantized is not None
    by_name = {layer.name: layer for layer in result.report}
    for name, kind in kinds.items():
        line = by_name[name]
        assert line.status == "quantized", line
        assert line.layer_kind == kind, line
        assert isinstance(quantized.get_submodule(name), QuantizedModule)

    with torch.no_grad():
        got = call(quantized, inputs)
        error = relative_error(got, expected)
        check_error(scheme, error)
        assert error > 0 or scheme == "fp16", "int8 output identical to float: nothing quantized?"

        reference = call(with_reference_kernels(quantized), inputs)
        assert relative_error(got, reference) < 1e-4, "kernel disagrees with the reference"

        for key, tensor in quantized.state_dict().items():
            assert type(tensor) is torch.Tensor, key
            assert not tensor.is_quantized, key

        buffer = io.BytesIO()
        torch.save(quantized, buffer)
        buffer.seek(0)
        reloaded = torch.load(buffer, weights_only=False)
        assert relative_error(call(reloaded, inputs), got) == 0.0

        if check_dtype:
            moved = copy.deepcopy(quantized).to(torch.bfloat16)
            low = call(moved, _cast_floats(tuple(inputs), torch.bfloat16))
            for t in tensors_of(low):
                assert t.dtype == torch.bfloat16
            check_error(scheme, relative_error(_cast_floats(low, torch.float32), expected))
    return quantized, result.report, error
