"""quantcore.compare and `quantcore analyze`: per-output and per-layer error of a quantized copy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import quantcore
from quantcore.cli import main
from tests.conftest import fingerprint


class Net(nn.Module):
    """Three linear layers; ``loud`` gets an input channel with a huge range (an outlier) that its
    weights ignore, so its output rests on the channels that per-token int8 crushes."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(16, 32)
        self.loud = nn.Linear(32, 32)
        self.last = nn.Linear(32, 4)
        with torch.no_grad():
            self.loud.weight[:, 0] = 0.0

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        h = torch.relu(self.first(x)) * scale
        h = h.clone()
        h[..., 0] = h[..., 0] * 300.0  # one outlier channel: per-token int8 crushes the others
        return self.last(torch.relu(self.loud(h)))


def build() -> nn.Module:
    torch.manual_seed(0)
    return Net().eval()


def batches(n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(5, 16, generator=g) for _ in range(n)]


def test_output_error_is_measured_over_all_batches(plugin_manager: object) -> None:
    model = build()
    result = quantcore.quantize(model, plugin_manager=plugin_manager)
    inputs = batches()
    report = quantcore.compare(model, result, inputs)
    with torch.no_grad():
        y = torch.cat([model(x) for x in inputs])
        q = torch.cat([result.module(x) for x in inputs])  # type: ignore[misc]
    (out,) = report.outputs
    assert report.batches == 3 and out.calls == 3
    assert out.relative_l2 == pytest.approx(float((q - y).norm() / y.norm()), rel=1e-4)
    cosine = float(torch.nn.functional.cosine_similarity(q.flatten(), y.flatten(), dim=0))
    assert out.cosine == pytest.approx(cosine, abs=1e-6)
    assert out.max_abs == pytest.approx(float((q - y).abs().max()), rel=1e-5)


def test_layer_error_is_against_the_float_layer_on_the_same_input(plugin_manager: object) -> None:
    model = build()
    result = quantcore.quantize(model, plugin_manager=plugin_manager)
    x = batches(1)[0]
    report = quantcore.compare(model, result.module, x)
    assert [s.name for s in report.layers] == ["first", "loud", "last"]
    seen: dict[str, torch.Tensor] = {}
    handle = result.module.loud.register_forward_pre_hook(  # type: ignore[union-attr]
        lambda m, args: seen.setdefault("input", args[0])
    )
    with torch.no_grad():
        result.module(x)  # type: ignore[misc]
        handle.remove()
        expected = model.loud(seen["input"])
        got = result.module.loud(seen["input"])  # type: ignore[union-attr,operator]
    loud = next(s for s in report.layers if s.name == "loud")
    assert loud.relative_l2 == pytest.approx(
        float((got - expected).norm() / expected.norm()), rel=1e-4
    )
    assert loud.layer_type == "QuantizedLinear"
    assert report.worst(1)[0].name == "loud"  # the outlier layer stands out


def test_inputs_as_kwargs_tuples_and_generators(plugin_manager: object) -> None:
    model = build()
    quantized = quantcore.quantize(model, plugin_manager=plugin_manager, output="module")
    x = batches(1)[0]
    as_tensor = quantcore.compare(model, quantized, x)
    as_kwargs = quantcore.compare(model, quantized, {"x": x, "scale": 1.0})
    as_tuple = quantcore.compare(model, quantized, (x, 1.0))
    as_generator = quantcore.compare(model, quantized, (b for b in [x, {"x": x}]))
    assert as_kwargs.outputs[0].relative_l2 == as_tensor.outputs[0].relative_l2
    assert as_tuple.outputs[0].relative_l2 == as_tensor.outputs[0].relative_l2
    assert as_generator.batches == 2
    scaled = quantcore.compare(model, quantized, (x, 0.01))
    assert scaled.outputs[0].relative_l2 != as_tensor.outputs[0].relative_l2


def test_nothing_changes_and_no_hook_stays(plugin_manager: object) -> None:
    model = build()
    quantized = quantcore.quantize(model, plugin_manager=plugin_manager, output="module")
    before = fingerprint(model)
    quantcore.compare(model, quantized, batches())
    assert fingerprint(model) == before
    assert all(not m._forward_hooks for m in quantized.modules())


def test_layer_outputs_are_not_kept(plugin_manager: object) -> None:
    """Each layer output is compared and dropped: after the layer hook returns, nothing of the
    compare machinery refers to the layer's output any more."""
    import weakref

    model = build()
    quantized = quantcore.quantize(model, plugin_manager=plugin_manager, output="module")
    refs: list[weakref.ref[torch.Tensor]] = []
    quantized.first.register_forward_hook(lambda m, a, out: refs.append(weakref.ref(out)))
    quantcore.compare(model, quantized, batches())
    assert len(refs) == 3 and all(r() is None for r in refs)


def test_tuple_outputs_and_recurrent_layers(plugin_manager: object) -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(8, 16, batch_first=True).eval()
    quantized = quantcore.quantize(lstm, plugin_manager=plugin_manager, output="module")
    report = quantcore.compare(lstm, quantized, torch.randn(2, 5, 8))
    assert [s.name for s in report.outputs] == ["output[0]", "output[1][0]", "output[1][1]"]
    assert [s.name for s in report.layers] == [""]  # the root itself is the quantized layer
    assert 0 < report.layers[0].relative_l2 < 0.05


def test_models_that_do_not_match_are_refused(plugin_manager: object) -> None:
    quantized = quantcore.quantize(build(), plugin_manager=plugin_manager, output="module")
    other = nn.Sequential(nn.Linear(16, 4))
    with pytest.raises(quantcore.AccuracyError, match="made from"):
        quantcore.compare(other, quantized, batches(1))
    with pytest.raises(quantcore.AccuracyError, match="no batch"):
        quantcore.compare(build(), quantized, [])
    with pytest.raises(quantcore.AccuracyError, match="sample inputs must be"):
        quantcore.compare(build(), quantized, 3)


def test_text_table_and_json() -> None:
    report = quantcore.compare(build(), quantcore.quantize(build()), batches(1))
    text = str(report)
    assert "loud" in text and "rel. L2" in text
    data = report.to_dict()
    assert json.loads(json.dumps(data))["layers"][1]["name"] == "loud"
    assert math.isclose(data["outputs"][0]["relative_l2"], report.outputs[0].relative_l2)


def test_cli_analyze(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs = tmp_path / "inputs.pt"
    torch.save(batches(2), inputs)
    assert main(["analyze", "--model", f"{__name__}:build", "--inputs", str(inputs)]) == 0
    text = capsys.readouterr().out
    assert "2 batch(es)" in text and "loud" in text
    assert main(["analyze", "--model", f"{__name__}:build", "--inputs", str(inputs), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [layer["name"] for layer in data["layers"]] == ["first", "loud", "last"]

    saved = tmp_path / "q.pt"
    quantcore.save(quantcore.quantize(build(), "fp16"), saved)
    args = ["analyze", "--model", f"{__name__}:build", "--inputs", str(inputs), "--json"]
    assert main([*args, "--quantized", str(saved)]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert from_file["outputs"][0]["relative_l2"] < data["outputs"][0]["relative_l2"] / 5


def test_cli_analyze_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs = tmp_path / "inputs.pt"
    torch.save(batches(1), inputs)
    assert main(["analyze", "--model", "no_such_module_q:build", "--inputs", str(inputs)]) == 1
    assert "cannot import" in capsys.readouterr().err
    assert main(["analyze", "--model", f"{__name__}", "--inputs", str(inputs)]) == 1
    assert "package.module:attribute" in capsys.readouterr().err
    assert main(["analyze", "--model", f"{__name__}:build", "--inputs", "missing.pt"]) == 1
    assert "does not exist" in capsys.readouterr().err
