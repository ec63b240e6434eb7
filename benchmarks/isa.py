"""``--isa avx2``: measure an AVX2-only CPU's code paths on a CPU that has more.

fbgemm, oneDNN, MKL, ATen and quantcore's native kernels each choose their vector code once per
process, from their own variable; the option re-runs the command with all five capped to AVX2
(torch.ao runs on fbgemm, fp32 on MKL and ATen, so both baselines are capped with them). Integer
products then saturate as on an AVX2 CPU, so INT8 takes 7-bit activations there, as it would.
What it cannot reproduce is another CPU's clock, caches or memory.
"""

from __future__ import annotations

import argparse
import os
import sys

from quantcore_native import MAX_ISA_VARIABLE

AVX2_VARIABLES = {
    "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    MAX_ISA_VARIABLE: "avx2",
}


def add_isa_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--isa",
        choices=("native", "avx2"),
        default="native",
        help="avx2: cap fbgemm, oneDNN, MKL, ATen and quantcore's kernels to AVX2 (re-runs "
        "the command with their variables set)",
    )


def capped() -> bool:
    """Whether this process runs under the AVX2 cap."""
    return all(os.environ.get(name) == value for name, value in AVX2_VARIABLES.items())


def rerun_capped_if_asked(isa: str, module: str, argv: list[str] | None) -> None:
    """With ``--isa avx2`` in a process not yet capped, replace it by the same command under the
    cap (the libraries read their variables when torch loads, before any option is parsed)."""
    if isa != "avx2" or capped():
        return
    args = sys.argv[1:] if argv is None else argv
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *args], os.environ | AVX2_VARIABLES)
