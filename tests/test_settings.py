"""One typed settings object for every entry point, and the arguments users bring from torch.ao and
torchao: torch dtypes, callable filters, per-layer overrides as a dict."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import torch
from torch import nn

import quantcore
from quantcore.cli import build_parser, main
from quantcore.config import SETTINGS

FIELDS = [f.name for f in dataclasses.fields(quantcore.QuantizeSettings)]


def test_settings_fields_are_the_configuration_keys() -> None:
    assert list(SETTINGS) == FIELDS


@pytest.mark.parametrize("entry", [quantcore.quantize, quantcore.quantize_to_file])
def test_every_entry_point_takes_every_setting(entry: object) -> None:
    parameters = inspect.signature(entry).parameters  # type: ignore[arg-type]
    assert set(FIELDS) <= set(parameters), set(FIELDS) - set(parameters)


def test_the_cli_takes_every_setting() -> None:
    parser = build_parser()
    quantize = next(
        action.choices["quantize"]
        for action in parser._actions
        if isinstance(action.choices, dict) and "quantize" in action.choices
    )
    dests = {action.dest for action in quantize._actions}
    assert set(FIELDS) <= dests, set(FIELDS) - dests


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(20, 8)
        self.body = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.body(self.embed(tokens)))
        return out


def _status(result: quantcore.QuantizationResult) -> dict[str, str]:
    return {line.name: f"{line.status}:{line.scheme or ''}" for line in result.report}


def test_quantize_to_file_honours_overrides_and_log_level(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """quantize_to_file once dropped these two settings."""
    report, (path,) = quantcore.quantize_to_file(
        Net(),
        tmp_path / "q.pt",
        overrides={"head": None},
        log_level="ERROR",
        exclude="no_such_layer",  # would warn below ERROR
    )
    assert {line.name: line.status for line in report}["head"] == "skipped"
    assert "head.weight_scale" not in quantcore.read_quantized(path).state_dict
    assert not [r for r in caplog.records if r.name == "quantcore" and r.levelno < 40]


def test_cli_passes_every_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "model.pt"
    torch.save(Net().state_dict(), source)
    out = tmp_path / "q.pt"
    code = main(
        [
            "quantize",
            str(source),
            "-o",
            str(out),
            "--dtype",
            "torch.qint8",
            "--override",
            "match=head,dtype=fp16",
            "--override",
            "match=body.0,skip=true",
            "--disable-plugin",
            "transformers",
            "--strict",
            "--log-level",
            "error",
            "-q",
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = capsys.readouterr().out
    assert "config: strict=true (parameter)" in report
    assert "disable_plugins=transformers" in report and "log_level=ERROR" in report
    manifest = quantcore.read_quantized(out).manifest
    schemes = {layer.name: layer.scheme for layer in manifest.layers}
    assert schemes == {"embed": "int8", "body.2": "int8", "head": "fp16"}


def test_cli_override_syntax_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["quantize", "x.pt", "-o", "y.pt", "--override", "skip"])
    assert "KEY=VALUE" in capsys.readouterr().err


# -- what torch.ao and torchao users write ----------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "scheme"), [(torch.qint8, "int8"), (torch.float16, "fp16"), (torch.int8, "int8")]
)
def test_torch_ao_dtypes(dtype: torch.dtype, scheme: str) -> None:
    # torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    result = quantcore.quantize(Net(), dtype=dtype)
    assert result.report.scheme == scheme
    assert result.report.config is not None and result.report.config.dtype == str(dtype)


def test_callable_filter_takes_name_and_module() -> None:
    seen: list[tuple[str, str]] = []

    def only_linear(name: str, module: nn.Module | None) -> bool:
        seen.append((name, type(module).__name__))
        return isinstance(module, nn.Linear) and name != "head"

    result = quantcore.quantize(Net(), include=only_linear)
    status = _status(result)
    assert status["body.0"] == status["body.2"] == "quantized:int8"
    assert status["head"].startswith("skipped") and status["embed"].startswith("skipped")
    assert ("body.0", "Linear") in seen and ("body", "Sequential") in seen  # parents asked too
    # exclude: a callable that matches a container leaves everything inside it float
    result = quantcore.quantize(Net(), exclude=[lambda name, m: name == "body", "head"])
    assert {n for n, s in _status(result).items() if s.startswith("quantized")} == {"embed"}


def test_callable_filter_on_a_state_dict_gets_no_module() -> None:
    modules: list[object] = []
    state = Net().state_dict()
    result = quantcore.quantize(
        state, exclude=lambda name, module: modules.append(module) or name == "head"
    )
    assert set(modules) == {None}
    assert (
        "head.weight_scale" not in result.state_dict and "body.0.weight_scale" in result.state_dict
    )


def test_callable_that_matches_nothing_warns_like_a_pattern(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def nothing(name: str, module: nn.Module | None) -> bool:
        return False

    quantcore.quantize(Net(), exclude=nothing)
    warned = [r.getMessage() for r in caplog.records if r.name == "quantcore"]
    assert any("nothing" in m and "matches no layer" in m for m in warned), warned
    with pytest.raises(quantcore.ConfigValueError, match="matches no layer"):
        quantcore.quantize(Net(), exclude=nothing, strict=True)


def test_overrides_as_a_dict() -> None:
    result = quantcore.quantize(
        Net(),
        overrides={
            "head": None,  # keep in float, as torch.ao's {"head": None}
            "body.0": "fp16",  # another scheme
            "body.2": {"granularity": "per_tensor"},
            nn.Embedding: {"dtype": torch.float16},  # by module class, as torch.ao's qconfig_spec
        },
    )
    status = _status(result)
    assert status["head"].startswith("skipped")
    assert status["body.0"] == status["embed"] == "quantized:fp16"
    assert result.state_dict["body.2.weight_scale"].numel() == 1
    lines = {line.name: line for line in result.report}
    assert lines["head"].override == "overrides[0] (match 'head'): skip=true"
    assert lines["embed"].override == (
        "overrides[3] (layer_type 'torch.nn.modules.sparse.Embedding'): dtype=torch.float16"
    )


def test_overrides_dict_in_a_file(config_home: Path) -> None:
    (config_home / "quantcore" / "config.toml").write_text(
        '[overrides."head"]\nskip = true\n\n[overrides."body.*"]\ndtype = "fp16"\n'
    )
    status = _status(quantcore.quantize(Net()))
    assert status["head"].startswith("skipped") and status["body.0"] == "quantized:fp16"


def test_callable_override_match() -> None:
    result = quantcore.quantize(
        Net(), overrides=[{"match": lambda name, m: isinstance(m, nn.Linear), "dtype": "fp16"}]
    )
    status = _status(result)
    assert status["head"] == status["body.0"] == "quantized:fp16"
    assert status["embed"] == "quantized:int8"
    assert "<filter" in str(result.report.config and result.report.config.describe())
