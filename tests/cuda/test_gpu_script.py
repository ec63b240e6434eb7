"""benchmarks/gpu.py is the one prepared script for scarce GPU time: its CPU smoke run (toy
sizes, Triton interpreter) must pass, or the GPU run would be spent finding the script's bugs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.py"


@pytest.mark.slow
def test_gpu_script_smoke_run_passes_its_correctness_checks() -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--no-bert"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 failure(s)" in proc.stdout
    assert "[ok] int8  1024 tokens float16" in proc.stdout
