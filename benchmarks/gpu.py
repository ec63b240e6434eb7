"""One short GPU run for quantcore's CUDA paths: correctness against the reference kernels,
then timings and the ratios the CUDA targets are stated in (see docs/benchmarks.md, "CUDA").

    python benchmarks/gpu.py            # about 2-4 minutes on an H100, most of it Triton
                                        # compiling and autotuning on first use
    python benchmarks/gpu.py --no-bert  # linear layers only

Prints "no CUDA device" and exits 0 on a machine without one. Exits 1 if a correctness check
fails (timings are still printed); a speed target that is missed is reported, not an error.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import quantcore

TOKENS = (1, 16, 1024, 8192)
FEATURES = 4096
BERT_BATCH, BERT_SEQ = 64, 128
# --smoke: every code path of this script on CPU at toy sizes, the Triton kernels under
# TRITON_INTERPRET=1; it checks the script, not the kernels' speed.
DEV = "cuda"
INT8_TRITON = "int8-linear-cuda-triton"
FP16_CUDA = "fp16-linear-cuda"

failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"  [{'ok' if ok else 'FAIL'}] {what}")
    if not ok:
        failures.append(what)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.float()
    return float((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


# --------------------------------------------------------------------------- timing


def time_ms(fn: Callable[..., Any], *args: Any, target_s: float = 0.25, repeats: int = 7) -> float:
    """Median milliseconds per call of ``fn(*args)``: back-to-back calls between CUDA events (so
    launch overhead counts, as in eager inference), after warmup (which triggers autotuning)."""
    if DEV == "cpu":
        begin = time.perf_counter()
        fn(*args)
        return (time.perf_counter() - begin) * 1000
    for _ in range(3):
        fn(*args)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        fn(*args)
    end.record()
    torch.cuda.synchronize()
    per_call = max(start.elapsed_time(end) / 5, 1e-3)
    inner = max(1, min(2000, int(target_s * 1000 / repeats / per_call)))
    samples = []
    for _ in range(repeats):
        start.record()
        for _ in range(inner):
            fn(*args)
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / inner)
    return float(statistics.median(samples))


# --------------------------------------------------------------------------- helpers


def quantize(model: nn.Module, dtype: str) -> nn.Module:
    result = quantcore.quantize(model, dtype=dtype)
    assert result.module is not None
    return result.module


def kernels_of(model: nn.Module) -> set[str]:
    return {str(m.kernel_name) for m in model.modules() if hasattr(m, "kernel_name")}


class HostTraffic(TorchDispatchMode):
    """Records ops that move more than a scalar between host and GPU (scalar reads such as
    ``bool(t.all())`` are fine; a weight copied to the host and back is not)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        ins = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        big_in = [t.device.type for t in ins if t.numel() > 1]
        big_out = [t.device.type for t in outs if t.numel() > 1]
        if ("cuda" in [t.device.type for t in ins] and "cpu" in big_out) or (
            "cpu" in big_in and "cuda" in [t.device.type for t in outs]
        ):
            self.events.append(str(func))
        return out


# --------------------------------------------------------------------------- correctness


@torch.no_grad()
def check_correctness() -> None:
    from quantcore_int8 import kernels_cuda
    from quantcore_int8.kernels import prepare_reference_linear
    from quantcore_int8.quantization import dequantize_weight

    print("\ncorrectness (CUDA kernels against the reference path)")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, FEATURES), nn.GELU(), nn.Linear(FEATURES, 1024))
    model = model.to(DEV)
    half = copy.deepcopy(model).half()
    with HostTraffic() as traffic:
        int8 = quantize(model, "int8")
        fp16 = quantize(model, "fp16")
    check(
        not traffic.events,
        f"quantizing a CUDA model moves no tensors to/from host {traffic.events[:5]}",
    )
    tensors = [*int8.parameters(), *int8.buffers(), *fp16.parameters(), *fp16.buffers()]
    check({t.device.type for t in tensors} == {DEV}, f"quantized models stay on {DEV}")
    if DEV == "cuda":
        check(kernels_of(int8) == {INT8_TRITON}, f"int8 layers run {kernels_of(int8)}")
        check(kernels_of(fp16) == {FP16_CUDA}, f"fp16 layers run {kernels_of(fp16)}")

    request = int8[0]._kernel_request()
    if DEV == "cpu" and request.activation is not None:
        # the width CUDA uses: on a CPU without VNNI the reference would otherwise take 7 bits
        request = dataclasses.replace(
            request, activation=dataclasses.replace(request.activation, bits=8)
        )
    layer = int8[0] if DEV == "cuda" else kernels_cuda.prepare_triton_linear(request)
    reference = prepare_reference_linear(request)
    int_mm = kernels_cuda.prepare_triton_linear(request, gemm="int_mm")
    eager = kernels_cuda.prepare_eager_linear(request)
    w = dequantize_weight(request.weight)
    bias = request.bias.float() if request.bias is not None else None
    tolerance = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}
    cases = [(m, dt) for m in (1, 5, 16, 17, 1024) for dt in (torch.float16, torch.bfloat16)]
    cases += [(3, torch.float32), (300, torch.float32), (8192, torch.bfloat16)]
    for m, dtype in cases:
        if DEV == "cpu" and m <= 16 and dtype == torch.bfloat16:
            print(f"  [skip] int8 {m:>5} tokens bfloat16: the interpreter's bfloat16 dot is wrong")
            continue
        x = torch.randn(m, FEATURES, device=DEV).to(dtype)
        with torch.no_grad():
            out = layer(x)
            # up to 16 tokens the weight-only path runs: the input is not quantized
            ref = F.linear(x.float(), w, bias) if m <= 16 else reference(x)
            err = rel_err(out, ref)
            ok = out.dtype == dtype and err < tolerance[dtype]
            extra = ""
            if m > 16:
                errs = [rel_err(int_mm(x), ref), rel_err(eager(x), ref)]
                ok = ok and max(errs) < tolerance[dtype]
                extra = f", int_mm variant {errs[0]:.1e}, eager fallback {errs[1]:.1e}"
            else:
                extra = f" (vs fake-quantized reference {rel_err(out, reference(x)):.1e})"
        check(ok, f"int8 {m:>5} tokens {str(dtype)[6:]:<8} rel err {err:.1e}{extra}")
    x3 = torch.randn(4, 33, FEATURES, device=DEV, dtype=torch.float16)
    with torch.no_grad():
        out = int8(x3)
        ref = half(x3)
    check(
        out.shape == (4, 33, 1024) and rel_err(out, ref) < 0.05,
        f"int8 model vs float {rel_err(out, ref):.1e}",
    )

    for dtype in (torch.float16, torch.float32, torch.bfloat16):
        x = torch.randn(64, FEATURES, device=DEV).to(dtype)
        with torch.no_grad():
            out = fp16(x)
            ref = half(x.half())
        err = rel_err(out, ref)
        check(
            out.dtype == dtype and err < max(tolerance[dtype], 2e-3),
            f"fp16 vs .half() model, {dtype} in: rel err {err:.1e}",
        )

    # quantized modules follow .to(device) and pick their kernel again
    x = torch.randn(32, FEATURES, device=DEV, dtype=torch.float16)
    with torch.no_grad():
        before = int8(x)
        int8.to("cpu")
        on_cpu = kernels_of(int8)
        cpu_out = int8(x.cpu().float())
        int8.to(DEV)
        after = int8(x)
    check(
        "cuda" not in " ".join(on_cpu) and cpu_out.device.type == "cpu", f".to('cpu') -> {on_cpu}"
    )
    check(
        (DEV == "cpu" or kernels_of(int8) == {INT8_TRITON}) and torch.equal(before, after),
        ".to('cuda') -> Triton kernels again, same output",
    )


# --------------------------------------------------------------------------- linear timings


@torch.no_grad()
def time_linears() -> list[dict[str, Any]]:
    from quantcore_int8 import kernels_cuda

    print(f"\ntiming: {FEATURES} x {FEATURES} linear (ms per call, median)")
    torch.manual_seed(0)
    base = nn.Linear(FEATURES, FEATURES).to(DEV)
    fp32 = base
    half = nn.Linear(FEATURES, FEATURES).to(DEV).half()
    half.load_state_dict(base.state_dict())
    bf16 = nn.Linear(FEATURES, FEATURES).to(DEV).bfloat16()
    bf16.load_state_dict(base.state_dict())
    q_int8 = quantize(bf16, "int8")  # what a bf16 model becomes; bf16 in, bf16 out
    request = q_int8._kernel_request()
    int_mm_variant = kernels_cuda.prepare_triton_linear(request, gemm="int_mm")
    eager = kernels_cuda.prepare_eager_linear(request)
    q_fp16 = quantize(base, "fp16")  # an fp32 model with fp16 weights
    w8 = q_int8.quantized_weight().data  # int8 [N, K] (reading .weight gives float values)
    rows = []
    for m in TOKENS:
        x32 = torch.randn(m, FEATURES, device=DEV)
        x16, xbf = x32.half(), x32.bfloat16()
        a8 = torch.randint(-127, 128, (max(m, 17), FEATURES), dtype=torch.int8, device=DEV)
        with torch.no_grad():
            row: dict[str, Any] = {"tokens": m}
            row["fp32"] = time_ms(fp32, x32)
            row["fp16"] = time_ms(half, x16)
            row["bf16"] = time_ms(bf16, xbf)
            row["_int_mm"] = time_ms(torch._int_mm, a8, w8.t()) if m > 16 else math.nan
            row["qc int8"] = time_ms(q_int8, xbf)
            row["qc int8 int_mm"] = time_ms(int_mm_variant, xbf) if m > 16 else math.nan
            row["qc int8 eager"] = time_ms(eager, xbf)
            row["qc fp16 (fp16 in)"] = time_ms(q_fp16, x16)
            row["qc fp16 (fp32 in)"] = time_ms(q_fp16, x32)
        rows.append(row)
    columns = [k for k in rows[0] if k != "tokens"]
    print("  tokens " + "".join(f"{c:>18}" for c in columns))
    for row in rows:
        print(f"  {row['tokens']:>6} " + "".join(f"{row[c]:>18.4f}" for c in columns))
    print("\nratios (speedup = baseline time / quantcore time; > 1 is faster)")
    for row in rows:
        m = row["tokens"]
        s_int8 = row["bf16"] / row["qc int8"]
        s_intmm = row["bf16"] / row["qc int8 int_mm"]
        s_fp16 = row["fp16"] / row["qc fp16 (fp16 in)"]
        raw = row["bf16"] / row["_int_mm"]
        target = 1.0
        verdict = "meets" if s_int8 >= target else "MISSES"
        aim = " (aim 1.2)" if m >= 1024 else ""
        print(
            f"  {m:>6} tokens: int8 vs bf16 {s_int8:5.2f}x [{verdict} >= {target}{aim}]"
            f"  int_mm variant {s_intmm:5.2f}x  raw _int_mm {raw:5.2f}x"
            f"  | fp16 vs .half() {s_fp16:5.2f}x [{'meets' if s_fp16 >= 0.97 else 'MISSES'}]"
        )
    return rows


# --------------------------------------------------------------------------- encoder


def _encoder() -> tuple[nn.Module, Callable[[nn.Module], Any], str]:
    ids = torch.randint(0, 30000, (BERT_BATCH, BERT_SEQ), device=DEV)
    try:
        from transformers import BertConfig, BertModel

        config = BertConfig() if DEV == "cuda" else BertConfig(num_hidden_layers=2)
        model = BertModel(config).eval()
        return model, lambda m: m(input_ids=ids), "transformers BertModel(BertConfig())"
    except Exception as exc:  # transformers missing or incompatible: same shapes in plain torch
        layer = nn.TransformerEncoderLayer(768, 12, 3072, batch_first=True, activation="gelu")
        model = nn.TransformerEncoder(layer, 12, enable_nested_tensor=False).eval()
        x = torch.randn(BERT_BATCH, BERT_SEQ, 768, device=DEV)
        return (
            model,
            lambda m: m(x.to(next(m.parameters()).dtype)),
            f"nn.TransformerEncoder ({exc})",
        )


@torch.no_grad()
def time_encoder() -> None:
    print(f"\ntiming: bert-base-shaped encoder, batch {BERT_BATCH} x {BERT_SEQ} tokens")
    torch.manual_seed(0)
    model, run, what = _encoder()
    print(f"  model: {what}, random weights")
    fp32 = model.to(DEV)
    with torch.no_grad():
        ref = run(fp32)
    ref_t = ref[0] if isinstance(ref, tuple) or hasattr(ref, "keys") else ref
    variants: dict[str, nn.Module] = {}
    half = copy.deepcopy(fp32).half()
    variants["fp16 (.half())"] = half
    variants["bf16"] = copy.deepcopy(fp32).bfloat16()
    variants["qc int8 (of .half())"] = quantize(half, "int8")
    variants["qc fp16 (of .half())"] = quantize(half, "fp16")
    variants["qc fp16 (of fp32)"] = quantize(fp32, "fp16")
    times = {"fp32": time_ms(run, fp32, target_s=1.0, repeats=5)}
    for name, m in variants.items():
        with torch.no_grad():
            out = run(m)
            out_t = out[0] if isinstance(out, tuple) or hasattr(out, "keys") else out
            cos = F.cosine_similarity(out_t.float().flatten(1), ref_t.float().flatten(1)).min()
            times[name] = time_ms(run, m, target_s=1.0, repeats=5)
        kernels = kernels_of(m) or {"-"}
        print(
            f"  {name:<22} {times[name]:8.3f} ms   min cosine vs fp32 {float(cos):.5f}   kernels {sorted(kernels)}"
        )
    print(f"  {'fp32':<22} {times['fp32']:8.3f} ms")
    base = times["fp16 (.half())"]
    for name in ("qc int8 (of .half())", "qc fp16 (of .half())", "qc fp16 (of fp32)"):
        print(f"  speedup {name} vs .half(): {base / times[name]:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-bert", action="store_true", help="skip the encoder timing")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on CPU (tests the script)")
    args = parser.parse_args()
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress shows even when piped to a file
    if args.smoke:
        global DEV, TOKENS, FEATURES, BERT_BATCH, BERT_SEQ
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
        DEV, TOKENS, FEATURES, BERT_BATCH, BERT_SEQ = "cpu", (1, 16, 24, 64), 64, 2, 8
    elif not torch.cuda.is_available():
        print("no CUDA device: nothing to check here (run this on a machine with a GPU)")
        return 0
    started = time.perf_counter()
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed (the eager fallback runs instead)"
    if DEV == "cuda":
        props = torch.cuda.get_device_properties(0)
        print(f"device: {props.name} (compute capability {props.major}.{props.minor})")
    else:
        print("device: CPU smoke run (toy sizes, Triton interpreter): timings mean nothing")
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, triton {triton_version}")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    sections: list[Callable[[], Any]] = [check_correctness, time_linears]
    if not args.no_bert:
        sections.append(time_encoder)
    for section in sections:
        try:
            section()
        except Exception:
            failures.append(f"{section.__name__} raised")
            traceback.print_exc()
        sys.stdout.flush()
    print(f"\ntotal {time.perf_counter() - started:.0f} s; {len(failures)} failure(s)")
    for failure in failures:
        print(f"  FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
