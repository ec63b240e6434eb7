"""The effective configuration display: `quantcore config show` and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cfg_helpers import small_model, write_user_config

import quantcore
from quantcore.cli import main

FILE = """dtype = "fp16"
exclude = ["2"]
log_level = "info"

[[overrides]]
match = "0"
symmetric = false
"""


def test_config_show_prints_every_setting_value_and_source(
    config_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(FILE)
    assert main(["config", "show", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    rows = {
        line.split()[0]: line
        for line in out.splitlines()
        if line.startswith("    ") and line.split()[0] in quantcore.config.SETTINGS
    }
    assert set(rows) == set(quantcore.config.SETTINGS)
    assert "fp16" in rows["dtype"] and f"[file {path}]" in rows["dtype"]
    assert "2" in rows["exclude"] and f"[file {path}]" in rows["exclude"]
    assert "INFO" in rows["log_level"]
    assert "(every layer)" in rows["include"] and "[default]" in rows["include"]
    assert "[default]" in rows["strict"] and "false" in rows["strict"]
    assert "overrides[0] (match '0'): symmetric=false" in out
    assert f"config=          {path} (used)" in out


def test_config_show_json_matches_the_report(
    config_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_user_config(config_home, FILE)
    assert main(["config", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    report = quantcore.quantize(small_model(), strict=False).report
    assert report.config is not None
    expected = report.config.to_dict()
    expected["settings"]["strict"] = {"value": False, "source": "default"}  # parameter in quantize
    assert shown == expected
    assert shown["settings"]["dtype"]["source"].startswith("file ")
    assert json.loads(json.dumps(report.to_dict()))["config"]["settings"]["strict"]["source"] == (
        "parameter"
    )


def test_report_text_lists_settings_not_at_default(config_home: Path) -> None:
    path = write_user_config(config_home, 'dtype = "fp16"\n')
    text = str(quantcore.quantize(small_model(), exclude="0").report)
    assert f"config: dtype=fp16 (file {path})" in text
    assert "config: exclude=0 (parameter)" in text
    assert "config: strict" not in text  # defaults are not repeated in every report


def test_config_show_reports_errors_with_exit_status(
    config_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_user_config(config_home, 'dtype = "in8"\n')
    assert main(["config", "show"]) == 1
    err = capsys.readouterr().err
    assert f"file {path}: key 'dtype': unknown scheme 'in8'" in err
    assert "did you mean 'int8'?" in err
