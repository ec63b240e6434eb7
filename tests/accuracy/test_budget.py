"""quantize(..., calibration=, max_error=): the most sensitive layers are kept back until the
output error on the calibration inputs is within the budget."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import quantcore
from quantcore.cli import main
from tests.accuracy.models import calibration, outlier_net, relative_error
from tests.conftest import fingerprint

BUDGET = 0.01


@pytest.fixture(scope="module")
def budgeted() -> quantcore.QuantizationResult:
    return quantcore.quantize(outlier_net(), calibration=calibration(), max_error=BUDGET)


def test_budget_is_met_and_measured_on_the_returned_model(
    budgeted: quantcore.QuantizationResult,
) -> None:
    accuracy = budgeted.report.accuracy
    assert accuracy is not None and accuracy.met
    assert accuracy.error_all_quantized > BUDGET  # the budget had work to do
    assert accuracy.error <= BUDGET
    assert budgeted.module is not None
    measured = relative_error(outlier_net(), budgeted.module, calibration())
    assert measured == pytest.approx(accuracy.error, rel=1e-4)


def test_kept_layers_are_float_and_reported_with_their_sensitivity(
    budgeted: quantcore.QuantizationResult,
) -> None:
    accuracy = budgeted.report.accuracy
    assert accuracy is not None and accuracy.kept
    lines = {line.name: line for line in budgeted.report}
    assert budgeted.module is not None
    for kept in accuracy.kept:
        line = lines[kept.name]
        assert line.status == "kept" and "accuracy budget" in (line.reason or "")
        assert f"{kept.sensitivity:.4g}" in (line.reason or "")
        assert type(budgeted.module.get_submodule(kept.name)) is nn.Linear
    text = str(budgeted.report)
    assert "budget 0.01: met" in text and "forward passes" in text


def test_no_kept_layer_could_be_quantized_again(budgeted: quantcore.QuantizationResult) -> None:
    """As few layers as the search can find: re-quantizing any single kept layer breaks it."""
    assert budgeted.report.accuracy is not None
    kept = [k.name for k in budgeted.report.accuracy.kept]
    for name in kept:
        others = [{"match": f"re:{n}", "skip": True} for n in kept if n != name]
        trial = quantcore.quantize(outlier_net(), overrides=others, output="module")
        assert relative_error(outlier_net(), trial, calibration()) > BUDGET, name


def test_search_is_bounded_and_deterministic(budgeted: quantcore.QuantizationResult) -> None:
    accuracy = budgeted.report.accuracy
    assert accuracy is not None
    layers = len(budgeted.report.quantized) + len(accuracy.kept)
    batches = accuracy.batches
    bound = batches * (2 + layers + math.ceil(math.log2(layers)) + 1 + len(accuracy.kept) + 1)
    assert accuracy.forward_passes <= bound
    again = quantcore.quantize(outlier_net(), calibration=calibration(), max_error=BUDGET)
    assert again.report.accuracy == accuracy


def test_fallback_scheme_instead_of_float() -> None:
    result = quantcore.quantize(
        outlier_net(), calibration=calibration(), max_error=BUDGET, fallback="fp16"
    )
    accuracy = result.report.accuracy
    assert accuracy is not None and accuracy.met and accuracy.kept
    lines = {line.name: line for line in result.report}
    for kept in accuracy.kept:
        assert kept.fallback == "fp16"
        assert lines[kept.name].status == "quantized" and lines[kept.name].scheme == "fp16"
        assert any("fp16 for the accuracy budget" in n for n in lines[kept.name].notes)


def test_cosine_and_callable_metrics() -> None:
    cosine = quantcore.quantize(
        outlier_net(), calibration=calibration(), max_error=1e-4, error_metric="cosine"
    )
    assert cosine.report.accuracy is not None
    assert cosine.report.accuracy.metric == "1 - cosine" and cosine.report.accuracy.met

    def max_abs(reference: torch.Tensor, output: torch.Tensor) -> float:
        return float((reference - output).abs().max())

    custom = quantcore.quantize(
        outlier_net(), calibration=calibration(), max_error=0.02, error_metric=max_abs
    )
    accuracy = custom.report.accuracy
    assert accuracy is not None and accuracy.metric.endswith("max_abs")
    assert accuracy.error_all_quantized > 0.02 >= accuracy.error


def test_calibration_alone_measures_and_changes_nothing(plugin_manager: object) -> None:
    model = outlier_net()
    before = fingerprint(model)
    plain = quantcore.quantize(model, plugin_manager=plugin_manager)
    measured = quantcore.quantize(model, calibration=calibration(), plugin_manager=plugin_manager)
    assert plain.report.accuracy is None
    assert measured.report.accuracy is not None and not measured.report.accuracy.kept
    assert measured.report.accuracy.max_error is None
    assert [x.status for x in plain.report] == [x.status for x in measured.report]
    assert fingerprint(model) == before
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_budget_not_met_is_reported_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="quantcore"):
        result = quantcore.quantize(
            outlier_net(), calibration=calibration(2), max_error=1e-7, fallback="fp16"
        )
    assert result.report.accuracy is not None and not result.report.accuracy.met
    assert "NOT met" in str(result.report) and "not met" in caplog.text


def test_what_the_budget_needs() -> None:
    with pytest.raises(quantcore.AccuracyError, match="needs calibration inputs"):
        quantcore.quantize(outlier_net(), max_error=0.01)
    with pytest.raises(quantcore.AccuracyError, match="a model that runs"):
        quantcore.quantize(outlier_net().state_dict(), calibration=calibration(), max_error=0.1)
    with pytest.raises(quantcore.ConfigValueError, match="max_error"):
        quantcore.quantize(outlier_net(), calibration=calibration(), max_error=-1.0)
    with pytest.raises(quantcore.ConfigValueError, match="unknown error metric"):
        quantcore.quantize(outlier_net(), calibration=calibration(), error_metric="l1")
    with pytest.raises(quantcore.UnknownSchemeError):
        quantcore.quantize(outlier_net(), calibration=calibration(), fallback="fp61")


def test_budget_from_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "quantcore.toml"
    config.write_text('max_error = 0.01\nerror_metric = "relative_l2"\nfallback = "fp16"\n')
    result = quantcore.quantize(outlier_net(), calibration=calibration(), config=config)
    accuracy = result.report.accuracy
    assert accuracy is not None and accuracy.max_error == 0.01 and accuracy.kept
    assert all(k.fallback == "fp16" for k in accuracy.kept)
    assert result.report.config is not None and result.report.config.max_error == 0.01
    config.write_text('max_error = "small"\n')
    with pytest.raises(quantcore.ConfigTypeError, match="max_error"):
        quantcore.quantize(outlier_net(), calibration=calibration(), config=config)


def test_cli_quantize_with_a_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs = tmp_path / "calibration.pt"
    torch.save(calibration(), inputs)
    out = tmp_path / "q.pt"
    factory = "tests.accuracy.models:outlier_net"
    args = ["quantize", "--model", factory, "--calibration", str(inputs), "-o", str(out)]
    assert main([*args, "--max-error", "0.01", "-q"]) == 0
    text = capsys.readouterr().out
    assert "budget 0.01: met" in text and "kept float for the accuracy budget" in text
    loaded = quantcore.load(out, outlier_net())
    assert relative_error(outlier_net(), loaded, calibration()) <= BUDGET
    assert main(["quantize", "-o", str(out)]) == 2
    assert "one of them" in capsys.readouterr().err
    assert main(["quantize", "--model", factory, "--max-error", "0.01", "-o", str(out)]) == 1
    assert "needs calibration inputs" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_budget_on_a_model_whose_float_path_differs() -> None:
    """torch's fused float encoder (eval, padding mask) hands nested tensors to its layers, which
    quantized attention does not take: kept-back layers run inside the quantized model."""
    from tests.zoo import get_entry

    entry = get_entry("transformer_encoder_post_norm")
    result = quantcore.quantize(entry.build(), calibration=[entry.make_inputs()], max_error=0.05)
    assert result.report.accuracy is not None and result.report.accuracy.met
