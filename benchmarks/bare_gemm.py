"""How close the INT8 linear layers come to the int8 GEMM under them: fbgemm's bare u8 x s8 GEMM
(operands quantized and the weight packed outside the timing), quantcore's INT8 layer and
torch.ao's qint8 layer, 1 thread, one process.

    python -m benchmarks.bare_gemm            # builds benchmarks/bare_gemm.cpp first (~1 minute)

Both layers run fbgemm's GEMM, so ``/bare`` is what a layer adds around it (quantizing the
activations, rescaling the output) and ``peak`` the bare GEMM's share of one core's int8
multiply-accumulate peak (benchmarks/int8_peak.c). A layer cannot be faster than the bare GEMM:
where torch.ao's ``/bare`` is below 1 / 0.9, no fbgemm-based layer can take 0.9x its time. A
measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

import quantcore
from benchmarks.isa import add_isa_option, rerun_capped_if_asked
from benchmarks.layers import best_times, int8_peak
from benchmarks.run import machine

SHAPES = [(128, 768, 768), (512, 768, 768), (128, 1024, 4096), (128, 4096, 1024), (128, 4096, 4096)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    add_isa_option(parser)
    args = parser.parse_args(argv)
    rerun_capped_if_asked(args.isa, "benchmarks.bare_gemm", argv)
    from torch.ao.quantization import quantize_dynamic
    from torch.utils.cpp_extension import load

    torch.set_num_threads(1)
    logging.getLogger("quantcore").setLevel(logging.ERROR)
    csrc = Path(__file__).parents[1] / "native" / "csrc"
    sources = [str(Path(__file__).with_name("bare_gemm.cpp")), str(csrc / "huge_pages.cpp")]
    native = load("quantcore_bare_gemm", sources, extra_include_paths=[str(csrc)])
    peak = int8_peak()
    print(json.dumps(machine() | {"int8 peak": peak}))
    header = f"{'m x k -> n':22} {'bare us':>9} {'peak':>5} | {'int8 us':>9} {'/bare':>6} | {'ao us':>9} {'/bare':>6} | {'int8/ao':>7}"
    print(header)
    print("-" * len(header))
    rows: list[dict[str, Any]] = []
    for m, k, n in SHAPES:
        torch.manual_seed(0)
        linear = nn.Linear(k, n).eval()
        x = torch.randn(m, k)
        ours = quantcore.quantize(linear, "int8").module
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = quantize_dynamic(nn.Sequential(linear), dtype=torch.qint8)[0]
            calls = max(1, int(2e9 / (m * k * n)))
            with torch.inference_mode():
                bare = native.bare_gemm_seconds(m, k, n, args.rounds, calls)
                best = best_times(
                    {"int8": lambda: ours(x), "ao": lambda: theirs(x)},  # noqa: B023
                    calls,
                    args.rounds,
                )
                int8, ao = best["int8"], best["ao"]
        share = None if peak is None else m * k * n / bare / 1e9 / peak["GMAC/s per core"]
        row = {"shape": f"{m}x{k}->{n}", "bare us": bare * 1e6, "bare of peak": share}
        row |= {"int8 us": int8 * 1e6, "int8 / bare": int8 / bare}
        row |= {"torch.ao us": ao * 1e6, "torch.ao / bare": ao / bare, "int8 / torch.ao": int8 / ao}
        rows.append(row)
        print(
            f"{row['shape']:22} {bare * 1e6:9.1f} {'-' if share is None else f'{share:5.2f}':>5} | "
            f"{int8 * 1e6:9.1f} {int8 / bare:6.3f} | {ao * 1e6:9.1f} {ao / bare:6.3f} | "
            f"{int8 / ao:7.3f}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "int8 peak": peak, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
