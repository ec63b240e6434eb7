"""`quantcore quantize` and `quantcore inspect` run as a user runs them: a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from quantcore.demo import build_demo_model


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantcore", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "model.pt"
    torch.save({"state_dict": build_demo_model()[0].state_dict(), "epoch": 1}, path)
    return path


def test_quantize_then_inspect(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.pt"
    done = run("quantize", str(checkpoint), "-o", str(out), "--dtype", "fp16", "--exclude", "head")
    assert done.returncode == 0, done.stderr
    assert "scheme fp16" in done.stdout and "excluded by pattern 'head'" in done.stdout
    assert f"wrote {out}" in done.stdout and out.is_file()
    assert (
        torch.load(out, weights_only=True)["state_dict"]["blocks.0.up.weight"].dtype
        == torch.float16
    )

    shown = run("inspect", str(out))
    assert shown.returncode == 0, shown.stderr
    assert "scheme fp16" in shown.stdout and "blocks.1.down" in shown.stdout
    assert "7 quantized layer(s)" in shown.stdout  # embedding, 2 attentions, 4 linears

    as_json = json.loads(run("inspect", str(out), "--json").stdout)
    assert as_json["scheme"] == "fp16" and len(as_json["layers"]) == 7
    assert {layer["weight_format"] for layer in as_json["layers"]} == {"fp16"}


def test_quantize_to_safetensors(checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    out = tmp_path / "q.safetensors"
    done = run("quantize", str(checkpoint), "-o", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    assert run("inspect", str(out)).returncode == 0


def test_errors_exit_1_with_an_actionable_message(tmp_path: Path) -> None:
    missing = run("quantize", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "q.pt"))
    assert missing.returncode == 1 and "no such file" in missing.stderr
    assert "Traceback" not in missing.stderr
    not_quantized = tmp_path / "float.pt"
    torch.save({"w": torch.ones(2)}, not_quantized)
    inspected = run("inspect", str(not_quantized))
    assert inspected.returncode == 1 and "not a quantcore file" in inspected.stderr


def test_usage_errors_exit_2(checkpoint: Path, tmp_path: Path) -> None:
    assert run("quantize", str(checkpoint)).returncode == 2  # -o is required
    config = run("quantize", str(checkpoint), "-o", str(tmp_path / "q.pt"), "--config", "c.toml")
    assert (
        config.returncode == 1 and "c.toml" in config.stderr and "does not exist" in config.stderr
    )


@pytest.mark.parametrize("command", ["quantize", "inspect", "plugins", "demo"])
def test_help_for_each_command(command: str) -> None:
    done = run(command, "--help")
    assert done.returncode == 0 and f"usage: quantcore {command}" in done.stdout


def test_plugins_lists_the_adapters() -> None:
    infos = json.loads(run("plugins", "--json").stdout)
    adapters = next(info for info in infos if info["name"] == "adapters")
    assert adapters["provides"]["input adapter"] == ["module", "state_dict", "checkpoint", "file"]
