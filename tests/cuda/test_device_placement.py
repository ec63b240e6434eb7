"""Quantization keeps tensors on the model's device: nothing is created on an implicit default
device (a CPU tensor mixed into a CUDA model's math is a host round trip or an error).

Without a GPU, the default device is set to "meta" while a CPU model is quantized: a tensor
built without ``device=`` would land on meta and break the CPU math, so this catches the same
mistakes a CUDA model would. The GPU itself is checked in benchmarks/gpu.py and in
test_cuda_backends.py (skipped without one).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from quantcore_int8.quantization import quantize_weight as int8_quantize_weight
from torch import nn

import quantcore


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 8))


def _quantize_with_meta_default(
    model: nn.Module, dtype: str, manager: quantcore.QuantcorePluginManager
) -> quantcore.QuantizationResult:
    torch.set_default_device("meta")
    try:
        return quantcore.quantize(model, dtype=dtype, plugin_manager=manager)
    finally:
        torch.set_default_device(None)


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_quantization_creates_no_tensor_on_the_default_device(
    plugin_manager: quantcore.QuantcorePluginManager, dtype: str
) -> None:
    model = _model()
    expected = quantcore.quantize(model, dtype=dtype)
    result = _quantize_with_meta_default(model, dtype, plugin_manager)
    assert result.module is not None and expected.module is not None
    tensors = [*result.module.parameters(), *result.module.buffers()]
    assert {t.device.type for t in tensors} == {"cpu"}
    assert all(r.status == "quantized" for r in result.report.layers if r.layer_kind == "linear")
    x = torch.randn(5, 16)
    assert torch.equal(result.module(x), expected.module(x))


class _SchemeMixingDevices:
    """An int8 scheme with the mistake the check exists for: a scale built without device=."""

    @quantcore.plugin.hookimpl
    def quantcore_schemes(self) -> Iterator[quantcore.plugin.Scheme]:
        def quantize_weight(
            weight: torch.Tensor,
            spec: quantcore.plugin.WeightSpec,
            observer: quantcore.plugin.Observer | None,
        ) -> quantcore.plugin.QuantizedWeight:
            q = int8_quantize_weight(weight, spec, observer)
            assert q.scale is not None
            scale = q.scale * torch.ones(q.scale.shape)  # lands on the default device
            return quantcore.plugin.QuantizedWeight(q.format, q.data, scale=scale, spec=q.spec)

        registry = quantcore.create_plugin_manager().registry()
        int8 = registry.scheme("int8")
        yield quantcore.plugin.Scheme(
            name="int8-mixing-devices",
            weight_format=int8.weight_format,
            layer_specs=int8.layer_specs,
            quantize_weight=quantize_weight,
            dequantize_weight=int8.dequantize_weight,
        )


def test_the_check_catches_a_tensor_built_on_the_default_device(
    plugin_manager: quantcore.QuantcorePluginManager,
) -> None:
    plugin_manager.register_plugin(_SchemeMixingDevices(), "mixing-devices")
    model = _model()
    assert quantcore.quantize(model, dtype="int8-mixing-devices", plugin_manager=plugin_manager)
    with pytest.raises(quantcore.LayerQuantizationError, match="device meta"):
        _quantize_with_meta_default(model, "int8-mixing-devices", plugin_manager)
