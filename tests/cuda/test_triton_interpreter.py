"""The Triton kernels' math on CPU, through Triton's interpreter (TRITON_INTERPRET=1).

Runs only where triton is installed (it is not in the test extra: the wheel is large):
``pip install -c constraints.txt triton`` then ``pytest tests/cuda``. Each case runs in a
subprocess because the interpreter setting must precede triton's kernel definitions and must not
leak into other tests. What the interpreter cannot show (speed, bfloat16 tensor-core math,
autotuning) is left to benchmarks/gpu.py on a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = Path(__file__).with_name("interpreted_checks.py")


def _run(case: str) -> dict[str, object]:
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), case], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_quantize_rows_matches_the_reference_bit_for_bit() -> None:
    result = _run("quantize_rows")
    assert result["checked"] == 28


def test_int8_gemm_with_fused_rescale_matches_the_reference_for_every_config() -> None:
    result = _run("int8_gemm")
    assert result["checked"] == 36
    assert isinstance(result["max_rel_error"], float) and result["max_rel_error"] < 1e-5


def test_weight_only_few_token_path_matches_dequantized_matmul() -> None:
    result = _run("weight_only")
    assert result["checked"] == 24
    errors = result["max_rel_error"]
    assert isinstance(errors, dict)
    assert errors["float32"] < 1e-5 and errors["float16"] < 2e-3


@pytest.mark.parametrize(
    "case",
    [
        "prepared_triton",
        "prepared_int_mm",
        "prepared_triton_asymmetric",
        "prepared_int_mm_asymmetric",
    ],
)
def test_prepared_backend_kernel_matches_the_reference_backend(case: str) -> None:
    result = _run(case)
    assert result["checked"] == 11
    assert isinstance(result["max_rel_error"], float) and result["max_rel_error"] < 1.6e-2
