"""The one-call API: inputs, outputs, partial quantization, the always-copy promise."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch
from baselines import check_error
from oracles import relative_error
from torch import nn

import quantcore
from tests.conftest import fingerprint


class Custom(nn.Module):
    """A layer no plugin knows: it must be reported, not silently ignored."""

    def __init__(self) -> None:
        super().__init__()
        self.matrix = nn.Parameter(torch.randn(8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.matrix


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 8), nn.LayerNorm(8), Custom(), nn.ReLU(), nn.Linear(8, 4))


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_module_in_result_out(dtype: str, plugin_manager: quantcore.QuantcorePluginManager) -> None:
    model = small_model()
    result = quantcore.quantize(model, dtype, plugin_manager=plugin_manager)
    assert isinstance(result, quantcore.QuantizationResult)
    assert result.module is not None and result.module is not model
    statuses = {layer.name: layer.status for layer in result.report}
    assert statuses == {"0": "quantized", "1": "kept", "2": "skipped", "4": "quantized"}
    skipped = result.report.skipped[0]
    assert skipped.reason == "no mapper for Custom"
    for layer in result.report.quantized:
        assert layer.scheme == dtype and layer.granularity and layer.kernel
    assert result.report.size_after < result.report.size_before
    assert set(result.state_dict) == set(result.module.state_dict())
    expected_format = torch.int8 if dtype == "int8" else torch.float16
    assert result.state_dict["0.weight"].dtype == expected_format
    x = torch.randn(5, 16)
    with torch.no_grad():
        check_error(dtype, relative_error(result.module(x), model(x)))


def test_dtype_defaults_to_int8(plugin_manager: quantcore.QuantcorePluginManager) -> None:
    result = quantcore.quantize(small_model(), plugin_manager=plugin_manager)
    assert result.report.scheme == "int8"


@pytest.mark.parametrize(
    ("alias", "scheme"),
    [
        (torch.int8, "int8"),
        (torch.qint8, "int8"),  # torch.ao.quantization.quantize_dynamic(dtype=torch.qint8)
        (torch.float16, "fp16"),
        ("torch.float16", "fp16"),
        ("half", "fp16"),
        ("INT8", "int8"),
    ],
)
def test_dtype_aliases(
    alias: object, scheme: str, plugin_manager: quantcore.QuantcorePluginManager
) -> None:
    result = quantcore.quantize(small_model(), alias, plugin_manager=plugin_manager)  # type: ignore[call-overload]
    assert result.report.scheme == scheme


def test_output_selects_module_or_state_dict(
    plugin_manager: quantcore.QuantcorePluginManager,
) -> None:
    model = small_model()
    module = quantcore.quantize(model, output="module", plugin_manager=plugin_manager)
    assert isinstance(module, nn.Module)
    state = quantcore.quantize(model, output="state_dict", plugin_manager=plugin_manager)
    assert isinstance(state, dict) and state["0.weight"].dtype == torch.int8
    with pytest.raises(ValueError, match="output must be"):
        quantcore.quantize(model, output="nope", plugin_manager=plugin_manager)  # type: ignore[call-overload]


def test_state_dict_in_state_dict_out(plugin_manager: quantcore.QuantcorePluginManager) -> None:
    model = small_model()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    result = quantcore.quantize(model.state_dict(), "int8", plugin_manager=plugin_manager)
    assert result.module is None
    from_module = quantcore.quantize(model, "int8", plugin_manager=plugin_manager).state_dict
    assert set(result.state_dict) == set(from_module)
    for key, tensor in from_module.items():
        assert torch.equal(result.state_dict[key], tensor), key
    statuses = {layer.name: layer.status for layer in result.report}
    assert statuses["0"] == "quantized" and statuses["4"] == "quantized"
    skipped = next(layer for layer in result.report if layer.name == "2")
    assert skipped.status == "skipped" and skipped.reason == "no mapper recognizes matrix"
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, original[key])
    with pytest.raises(ValueError, match="needs a module input"):
        quantcore.quantize(model.state_dict(), output="module", plugin_manager=plugin_manager)


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_callers_model_is_untouched(
    dtype: str, plugin_manager: quantcore.QuantcorePluginManager
) -> None:
    model = small_model().train()
    model[4].weight.requires_grad_(False)
    before = fingerprint(model)
    result = quantcore.quantize(model, dtype, plugin_manager=plugin_manager)
    assert fingerprint(model) == before
    assert result.module is not None
    # The copy shares no storage with the original.
    original_ptrs = {t.data_ptr() for t in [*model.parameters(), *model.buffers()]}
    assert not original_ptrs & {t.data_ptr() for t in result.module.state_dict().values()}
    assert model.training and not result.module.training


def _failing_mapper_plugin(fail_on: str) -> object:
    class Plugin:
        @quantcore.plugin.hookimpl
        def quantcore_layer_mappers(self) -> Iterator[quantcore.plugin.LayerMapper]:
            def convert(module: nn.Module, ctx: quantcore.plugin.ConversionContext) -> nn.Module:
                ctx.quantize_weight(module.matrix)  # type: ignore[arg-type]
                raise RuntimeError("injected failure")

            yield quantcore.plugin.LayerMapper(
                name="failing",
                layer_kind="linear",
                matches=lambda m: type(m).__name__ == fail_on,
                convert=convert,
                priority=1000,
            )

    return Plugin()


def test_mid_process_failure_names_the_layer_and_leaves_the_original(
    plugin_manager: quantcore.QuantcorePluginManager,
) -> None:
    plugin_manager.register_plugin(_failing_mapper_plugin("Custom"), "failing")
    model = small_model()
    before = fingerprint(model)
    with pytest.raises(quantcore.LayerQuantizationError) as info:
        quantcore.quantize(model, plugin_manager=plugin_manager)
    assert info.value.layer == "2" and info.value.layer_type == "Custom"
    assert "injected failure" in str(info.value) and "exclude=['2']" in str(info.value)
    assert isinstance(info.value.cause, RuntimeError)
    assert fingerprint(model) == before


def test_excluded_layers_stay_float(plugin_manager: quantcore.QuantcorePluginManager) -> None:
    result = quantcore.quantize(small_model(), exclude=["4"], plugin_manager=plugin_manager)
    line = next(layer for layer in result.report if layer.name == "4")
    assert line.status == "skipped" and "excluded by pattern '4'" in (line.reason or "")
    assert result.module is not None and isinstance(result.module[4], nn.Linear)


def test_skipped_layers_are_logged_and_work_continues(
    plugin_manager: quantcore.QuantcorePluginManager, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="quantcore"):
        result = quantcore.quantize(small_model(), plugin_manager=plugin_manager)
    assert result.report.quantized
    assert any(
        "no mapper for Custom" in r.getMessage() and r.name == "quantcore" for r in caplog.records
    )


def test_unknown_dtype_lists_schemes_and_suggests(
    plugin_manager: quantcore.QuantcorePluginManager,
) -> None:
    with pytest.raises(quantcore.UnknownSchemeError) as info:
        quantcore.quantize(small_model(), "int9", plugin_manager=plugin_manager)
    message = str(info.value)
    assert "'int8'" in message and "'fp16'" in message and "did you mean 'int8'" in message
    assert "distribution 'quantcore'" in message


def test_unsupported_input_says_what_was_tried(
    plugin_manager: quantcore.QuantcorePluginManager,
) -> None:
    with pytest.raises(quantcore.UnsupportedInputError) as info:
        quantcore.quantize(42, plugin_manager=plugin_manager)
    assert (
        "int" in str(info.value) and "module" in str(info.value) and "state_dict" in str(info.value)
    )


def test_shared_module_stays_shared(plugin_manager: quantcore.QuantcorePluginManager) -> None:
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    result = quantcore.quantize(model, plugin_manager=plugin_manager)
    assert result.module is not None
    assert result.module[0] is result.module[2]
    assert len(result.report.quantized) == 1


def test_quantized_model_follows_to_and_pickles(
    plugin_manager: quantcore.QuantcorePluginManager, tmp_path: object
) -> None:
    import io

    model = small_model()
    quantized = quantcore.quantize(model, output="module", plugin_manager=plugin_manager)
    x = torch.randn(3, 16)
    expected = quantized(x)
    buffer = io.BytesIO()
    torch.save(quantized, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    assert torch.equal(restored(x), expected)
    moved = quantized.to(torch.device("cpu"))
    assert torch.equal(moved(x), expected)
    fresh = quantcore.quantize(model, output="module", plugin_manager=plugin_manager)
    fresh.load_state_dict(quantized.state_dict())
    assert torch.equal(fresh(x), expected)
