"""Zoo-wide speed: every model of the in-repo test zoo (tests/zoo), fp32 against quantcore and
torch.ao ``quantize_dynamic`` (its default layer set: Linear and the recurrent layers), INT8 and
FP16, at 1 and 2 intra-op threads.

    python -m benchmarks.zoo                   # every entry, 1 and 2 threads
    python -m benchmarks.zoo --threads 1 --only bare_lstm,gpt2

For each model the variants run round-robin in one process (each round calls every variant
once), and a variant's time is the median over rounds. Printed per model: quantized / fp32 and
quantized / torch.ao latency, and each variant's relative output error against fp32; then, per
dtype and thread count, the median and the worst ratio over the zoo. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import quantcore
from benchmarks.isa import add_isa_option, rerun_capped_if_asked
from benchmarks.run import machine, relative_error

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"int8": torch.qint8, "fp16": torch.float16}


def _median_times(
    fns: dict[str, Callable[[], object]], rounds: int, budget_s: float
) -> dict[str, float]:
    for fn in fns.values():  # warm-up: lazy packing, allocator, caches
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    started = time.perf_counter()
    for i in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        if i >= 4 and time.perf_counter() - started > budget_s:
            break
    return {name: statistics.median(ts) for name, ts in times.items()}


def _torch_ao(model: nn.Module, dtype: torch.dtype, inputs: Any, entry: Any) -> nn.Module | None:
    """torch.ao's quantized copy, or None where it fails (to quantize or to run)."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # deprecated: its warnings are not ours to show
        warnings.simplefilter("ignore")
        try:
            quantized = quantize_dynamic(model, dtype=dtype)
            entry.run(quantized, inputs)
        except Exception:
            return None
    return quantized


def _error(entry: Any, output: Any, reference: Any) -> float:
    """As the zoo test measures it (an entry may compare only some positions), for tensors."""
    if isinstance(output, torch.Tensor) and isinstance(reference, torch.Tensor):
        return float(entry.output_error(output, reference))
    return relative_error(output, reference)


def bench_entry(entry: Any, threads: int, rounds: int, budget_s: float) -> dict[str, Any]:
    torch.set_num_threads(threads)
    model = entry.build()
    inputs = entry.make_inputs()
    manager = quantcore.create_plugin_manager()
    variants: dict[str, nn.Module] = {"fp32": model}
    for name, dtype in DTYPES.items():
        result = quantcore.quantize(model, name, plugin_manager=manager)
        assert result.module is not None
        variants[f"quantcore {name}"] = result.module
        ao = _torch_ao(model, dtype, inputs, entry)
        if ao is not None:
            variants[f"torch.ao {name}"] = ao
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outputs = {name: entry.run(m, inputs) for name, m in variants.items()}
        times = _median_times(
            {name: (lambda m=m: entry.run(m, inputs)) for name, m in variants.items()},
            rounds,
            budget_s,
        )
    row: dict[str, Any] = {"model": entry.name, "threads": threads}
    for name in DTYPES:
        ours, theirs = times[f"quantcore {name}"], times.get(f"torch.ao {name}")
        row[f"{name} / fp32"] = ours / times["fp32"]
        row[f"{name} / torch.ao"] = None if theirs is None else ours / theirs
        row[f"{name} error"] = _error(entry, outputs[f"quantcore {name}"], outputs["fp32"])
        ao_out = outputs.get(f"torch.ao {name}")
        row[f"torch.ao {name} error"] = (
            None if ao_out is None else _error(entry, ao_out, outputs["fp32"])
        )
    row["fp32 ms"] = times["fp32"] * 1e3
    return row


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    summary = []
    for threads in sorted({r["threads"] for r in rows}):
        chosen = [r for r in rows if r["threads"] == threads]
        for name in DTYPES:
            for ratio in (f"{name} / fp32", f"{name} / torch.ao"):
                measured = [r for r in chosen if r[ratio] is not None]  # torch.ao may fail
                values = [r[ratio] for r in measured]
                worst = max(measured, key=lambda r, k=ratio: r[k])  # type: ignore[misc]
                summary.append(
                    {
                        "threads": threads,
                        "ratio": ratio,
                        "median": statistics.median(values),
                        "worst": worst[ratio],
                        "worst model": worst["model"],
                        "models above 1.0": sum(v > 1.0 for v in values),
                        "models": len(values),
                    }
                )
    return summary


def _fmt(value: float | None, width: int, digits: int) -> str:
    return f"{'failed':>{width}}" if value is None else f"{value:{width}.{digits}f}"


def print_rows(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'model':34} {'thr':>3} {'fp32 ms':>8} | {'int8/fp32':>9} {'int8/ao':>8} "
        f"{'err':>7} {'ao err':>7} | {'fp16/fp32':>9} {'fp16/ao':>8} {'err':>7} {'ao err':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        cells = [f"{r['model']:34} {r['threads']:>3} {r['fp32 ms']:8.3f} |"]
        for name in DTYPES:
            cells += [
                _fmt(r[f"{name} / fp32"], 9, 2),
                _fmt(r[f"{name} / torch.ao"], 8, 2),
                _fmt(r[f"{name} error"], 7, 4),
                _fmt(r[f"torch.ao {name} error"], 7, 4) + (" |" if name == "int8" else ""),
            ]
        print(" ".join(cells), flush=True)


def print_summary(summary: list[dict[str, Any]]) -> None:
    print()
    print(f"{'threads':>7} {'ratio':18} {'median':>7} {'worst':>7}  {'worst model':34} {'>1.0':>6}")
    for s in summary:
        print(
            f"{s['threads']:>7} {s['ratio']:18} {s['median']:7.2f} {s['worst']:7.2f}  "
            f"{s['worst model']:34} {s['models above 1.0']:>3}/{s['models']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=40, help="at most this many rounds")
    parser.add_argument("--budget", type=float, default=1.5, help="seconds per model, about")
    parser.add_argument("--only", default="", help="comma-separated zoo entry names")
    parser.add_argument("--json", type=Path, help="also write the rows and summary here")
    add_isa_option(parser)
    args = parser.parse_args(argv)
    rerun_capped_if_asked(args.isa, "benchmarks.zoo", argv)
    logging.getLogger("quantcore").setLevel(logging.ERROR)  # layers kept float are expected
    sys.path.insert(0, str(ROOT))
    from tests.zoo import all_zoo

    entries = all_zoo()
    if args.only:
        wanted = set(args.only.split(","))
        entries = [e for e in entries if e.name in wanted]
    print(json.dumps(machine()))
    rows = []
    for threads in args.threads:
        for entry in entries:
            rows.append(bench_entry(entry, threads, args.rounds, args.budget))
            print_rows(rows[-1:])
    print()
    print_rows(rows)
    summary = summarize(rows)
    print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows, "summary": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
