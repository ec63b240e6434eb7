"""Per-layer speed: one quantized layer at a time, quantcore against fp32 and torch.ao
``quantize_dynamic`` (qint8 and float16), INT8 and FP16, in one process.

    python -m benchmarks.layers                  # every shape, 1 thread
    python -m benchmarks.layers --threads 2 --only linear

Linear layers 256 to 4096 wide at 1, 8, 64, 128 and 512 tokens; LSTM/GRU/RNN (32 steps, batch 1
and 8) and their cells; a BERT-base-sized ``nn.TransformerEncoderLayer`` (1 and 8 x 128 tokens;
torch.ao's quantized one fails in eval mode: "failed"). Each row times its variants round-robin
(every round calls each variant once, many calls per round for small layers) and keeps the best
round, as per-call microseconds; the ratio columns are quantcore / torch.ao and quantcore / fp32
of the same dtype, the error columns each variant's relative output error against fp32, and the
peak columns the share of the cores' int8 multiply-accumulate peak (measured first, by
``int8_peak.c``) that torch.ao's and quantcore's INT8 layer reach. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import quantcore
from benchmarks.isa import add_isa_option, capped, rerun_capped_if_asked
from benchmarks.run import machine, relative_error

LINEAR_SHAPES = [(256, 256), (768, 768), (1024, 4096), (4096, 1024), (4096, 4096)]
TOKENS = [1, 8, 64, 128, 512]
AO_DTYPES = {"int8": torch.qint8, "fp16": torch.float16}


@dataclass
class Case:
    kind: str
    name: str
    model: nn.Module
    run: Callable[[nn.Module], Any]
    work: float  # multiply-adds per call, to size the timing loops


def _linear_cases() -> Iterator[Case]:
    for in_features, out_features in LINEAR_SHAPES:
        for tokens in TOKENS:
            torch.manual_seed(0)
            model = nn.Linear(in_features, out_features).eval()
            x = torch.randn(tokens, in_features)
            yield Case(
                "linear",
                f"Linear {in_features}->{out_features}, {tokens} tok",
                model,
                lambda m, x=x: m(x),
                tokens * in_features * out_features,
            )


def _recurrent_cases() -> Iterator[Case]:
    for cls in (nn.LSTM, nn.GRU, nn.RNN):
        for batch in (1, 8):
            torch.manual_seed(0)
            model = cls(128, 128).eval()
            x = torch.randn(32, batch, 128)
            work = 32 * batch * 2 * 128 * 128 * {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}[cls]
            yield Case(
                "recurrent",
                f"{cls.__name__} 128, 32 steps, batch {batch}",
                model,
                lambda m, x=x: m(x)[0],
                work,
            )
    for cell_cls, gates in ((nn.LSTMCell, 4), (nn.GRUCell, 3), (nn.RNNCell, 1)):
        torch.manual_seed(0)
        cell = cell_cls(128, 128).eval()
        x = torch.randn(8, 128)
        state = cell(x)  # a state to start from: (h, c) for LSTMCell, h otherwise
        yield Case(
            "recurrent",
            f"{cell_cls.__name__} 128, batch 8",
            cell,
            lambda m, x=x, s=state: _first(m(x, s)),
            8 * 2 * 128 * 128 * gates,
        )


def _encoder_cases() -> Iterator[Case]:
    """BERT-base-sized nn.TransformerEncoderLayer: eval-mode fp32 takes torch's fused fast path,
    and the layer reads its children's weights on every call to decide on it."""
    for batch in (1, 8):
        torch.manual_seed(0)
        model = nn.TransformerEncoderLayer(768, 12, 3072, batch_first=True).eval()
        x = torch.randn(batch, 128, 768)
        yield Case(
            "encoder",
            f"EncoderLayer 768, {batch}x128 tok",
            model,
            lambda m, x=x: m(x),
            batch * 128 * 768 * (4 * 768 + 2 * 3072),
        )


def int8_peak() -> dict[str, Any] | None:
    """One core's int8 multiply-accumulate peak, from benchmarks/int8_peak.c (built here with the
    system C compiler): the ceiling any int8 GEMM, fbgemm's included, works under. None without
    a compiler or on a CPU with neither AVX512-VNNI nor AVX2."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    source = Path(__file__).with_name("int8_peak.c")
    with tempfile.TemporaryDirectory() as tmp:
        binary = str(Path(tmp) / "int8_peak")
        built = subprocess.run([compiler, "-O2", str(source), "-o", binary], capture_output=True)
        if built.returncode != 0:
            return None
        # under --isa avx2, the AVX2 peak: the instructions the capped GEMMs are built from
        ran = subprocess.run(
            [binary, *(["avx2"] if capped() else [])], capture_output=True, text=True
        )
    if ran.returncode != 0:
        return None
    isa, gmacs = ran.stdout.split()
    return {"isa": isa, "GMAC/s per core": float(gmacs)}


def _first(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, tuple) else value


def _variants(case: Case) -> dict[str, nn.Module]:
    from torch.ao.quantization import quantize_dynamic

    variants: dict[str, nn.Module] = {"fp32": case.model}
    for name, ao_dtype in AO_DTYPES.items():
        result = quantcore.quantize(case.model, name)
        assert result.module is not None
        variants[f"quantcore {name}"] = result.module
        with warnings.catch_warnings():  # deprecated: its warnings are not ours to show
            warnings.simplefilter("ignore")
            wrapped = quantize_dynamic(nn.Sequential(case.model), dtype=ao_dtype)
            try:  # its quantized TransformerEncoderLayer fails in eval mode
                with torch.inference_mode():
                    case.run(wrapped[0])
            except Exception:
                continue
        variants[f"torch.ao {name}"] = wrapped[0]
    return variants


def best_times(fns: dict[str, Callable[[], object]], calls: int, rounds: int) -> dict[str, float]:
    """Seconds per call of each function: the best round, the functions taken in turn each round."""
    for fn in fns.values():  # warm-up: lazy packing, allocator, caches
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / calls)
    return best


def bench_case(case: Case, rounds: int, peak: float | None = None) -> dict[str, Any]:
    """``peak``: the int8 MAC peak of the cores in use (GMAC/s), for the rows' share of it."""
    variants = _variants(case)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outputs = {name: case.run(m) for name, m in variants.items()}
        calls = max(1, min(2000, int(2e7 / max(case.work, 1.0))))
        times = best_times(
            {name: (lambda m=m: case.run(m)) for name, m in variants.items()}, calls, rounds
        )
    row: dict[str, Any] = {"kind": case.kind, "case": case.name, "fp32 us": times["fp32"] * 1e6}
    for dtype in AO_DTYPES:
        ours, theirs = times[f"quantcore {dtype}"], times.get(f"torch.ao {dtype}")
        ao_out = outputs.get(f"torch.ao {dtype}")
        row[f"{dtype} us"] = ours * 1e6
        row[f"torch.ao {dtype} us"] = None if theirs is None else theirs * 1e6
        row[f"{dtype} / torch.ao"] = None if theirs is None else ours / theirs
        row[f"{dtype} / fp32"] = ours / times["fp32"]
        row[f"{dtype} error"] = relative_error(outputs[f"quantcore {dtype}"], outputs["fp32"])
        row[f"torch.ao {dtype} error"] = (
            None if ao_out is None else relative_error(ao_out, outputs["fp32"])
        )
    for variant in ("int8", "torch.ao int8"):  # share of the machine's int8 MAC peak
        seconds = row[f"{variant} us"]
        row[f"{variant} of peak"] = (
            None if peak is None or seconds is None else case.work / (seconds * 1e3) / peak
        )
    return row


def _fmt(value: float | None, width: int, digits: int) -> str:
    return f"{'failed':>{width}}" if value is None else f"{value:{width}.{digits}f}"


def print_row(row: dict[str, Any]) -> None:
    print(
        f"{row['case']:34} {row['fp32 us']:9.1f} | "
        f"{_fmt(row['torch.ao int8 us'], 9, 1)} {row['int8 us']:9.1f} "
        f"{_fmt(row['int8 / torch.ao'], 6, 2)} {row['int8 / fp32']:6.2f} "
        f"{row['int8 error']:7.4f} {_fmt(row['torch.ao int8 error'], 7, 4)} | "
        f"{_fmt(row['torch.ao fp16 us'], 9, 1)} {row['fp16 us']:9.1f} "
        f"{_fmt(row['fp16 / torch.ao'], 6, 2)} {row['fp16 / fp32']:6.2f} | "
        f"{_fmt(row['torch.ao int8 of peak'], 5, 2)} {_fmt(row['int8 of peak'], 5, 2)}",
        flush=True,
    )


def print_header() -> None:
    header = (
        f"{'case':34} {'fp32 us':>9} | {'ao int8':>9} {'int8':>9} {'/ao':>6} {'/fp32':>6} "
        f"{'err':>7} {'ao err':>7} | {'ao fp16':>9} {'fp16':>9} {'/ao':>6} {'/fp32':>6} | "
        f"{'peak: ao':>8} {'int8':>5}"
    )
    print(header)
    print("-" * len(header))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=("linear", "recurrent", "encoder"))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    add_isa_option(parser)
    args = parser.parse_args(argv)
    rerun_capped_if_asked(args.isa, "benchmarks.layers", argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("quantcore").setLevel(logging.ERROR)
    peak = int8_peak()
    print(json.dumps(machine() | {"int8 peak": peak}))
    cores = min(args.threads, os.cpu_count() or 1)
    peak_gmacs = None if peak is None else peak["GMAC/s per core"] * cores
    print_header()
    cases: list[Iterator[Case]] = []
    if args.only in (None, "linear"):
        cases.append(_linear_cases())
    if args.only in (None, "recurrent"):
        cases.append(_recurrent_cases())
    if args.only in (None, "encoder"):
        cases.append(_encoder_cases())
    rows = []
    for group in cases:
        for case in group:
            rows.append(bench_case(case, args.rounds, peak_gmacs))
            print_row(rows[-1])
    if args.json:
        report = {"machine": machine(), "int8 peak": peak, "rows": rows}
        args.json.write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
