"""Progress while quantizing: the API's callback and the CLI's lines on stderr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

import quantcore


def deep_model(layers: int = 30) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*(nn.Linear(16, 16) for _ in range(layers)))


def test_progress_callback_sees_every_layer_then_the_end() -> None:
    calls: list[tuple[int, int, str]] = []
    quantcore.quantize(
        deep_model(), progress=lambda done, total, name: calls.append((done, total, name))
    )
    assert calls[0] == (0, 30, "0")
    assert [done for done, _, _ in calls] == list(range(31))
    assert calls[-1] == (30, 30, "")


def test_cli_shows_progress_for_large_models_and_quiet_silences_it(tmp_path: Path) -> None:
    checkpoint = tmp_path / "deep.pt"
    torch.save(deep_model().state_dict(), checkpoint)

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "quantcore",
                "quantize",
                str(checkpoint),
                "-o",
                str(tmp_path / "q.pt"),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    loud = run()
    assert loud.returncode == 0, loud.stderr
    progress_lines = [line for line in loud.stderr.splitlines() if line.startswith("[")]
    assert progress_lines[0].startswith("[0/30]") and progress_lines[-1] == "[30/30]"
    quiet = run("--quiet")
    assert quiet.returncode == 0
    assert not [line for line in quiet.stderr.splitlines() if line.startswith("[")]
