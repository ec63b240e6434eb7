"""Resident memory of a quantized decoder while it runs, next to torch.ao's and fp32's.

    python -m benchmarks.memory                    # 1.1B LLaMA-style decoder, every variant
    python -m benchmarks.memory --decoder-size 100m

The peak-memory column of ``benchmarks.run`` covers quantizing; this covers inference: fast
kernels pack weights on a layer's first call, and those packs stay (the layer then drops its
plain copy where the pack can give it back). Each variant runs in its own subprocess, so one variant's memory never counts
against another's: the process builds the float model, quantizes it, frees the float model, then
records its resident set (Linux ``VmRSS``, after ``malloc_trim``) once the libraries are loaded
(the baseline every variant shares), after quantizing, after one decode step and after a
128-token prefill. The "compiled" variants run the decode and the prefill through
``torch.compile`` (the compiler's own memory counts too). A measurement, not a test.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import warnings

import torch

from benchmarks.run import DECODER_SIZES, _release_free_memory, _rss_kib, build_decoder

VARIANTS = (
    "fp32",
    "quantcore int8",
    "quantcore fp16",
    "quantcore int8 compiled",
    "quantcore fp16 compiled",
    "torch.ao qint8",
    "torch.ao float16",
)
STAGES = ("libraries", "quantized", "after decode", "after prefill")


def _rss_gb() -> float:
    _release_free_memory()
    return _rss_kib("VmRSS") * 1024 / 1e9


def _quantize(model: torch.nn.Module, variant: str) -> torch.nn.Module:
    if variant == "fp32":
        return model
    if variant.startswith("quantcore"):
        import quantcore

        module = quantcore.quantize(model, variant.split()[1]).module
        assert module is not None
        return torch.compile(module) if variant.endswith("compiled") else module
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        dtype = torch.qint8 if variant.endswith("qint8") else torch.float16
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=dtype)


def measure_one(variant: str, size: str) -> dict[str, float]:
    """RSS (GB) of this process at each stage; run in a fresh process."""
    torch.set_num_threads(2)
    import transformers  # noqa: F401

    import quantcore  # noqa: F401  (every library loaded before the baseline)

    rss = {"libraries": _rss_gb()}
    model = build_decoder(size)
    quantized = _quantize(model, variant)
    if quantized is not model:
        del model
    gc.collect()
    rss["quantized"] = _rss_gb()
    generator = torch.Generator().manual_seed(0)
    vocab = DECODER_SIZES[size]["vocab_size"]
    prompt = torch.randint(0, vocab, (1, 128), generator=generator)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cache = quantized(prompt[:, :1], use_cache=True).past_key_values
        quantized(prompt[:, 1:2], past_key_values=cache, use_cache=True)
        rss["after decode"] = _rss_gb()
        quantized(prompt, use_cache=False)
        rss["after prefill"] = _rss_gb()
    return rss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decoder-size", choices=tuple(DECODER_SIZES), default="1b")
    parser.add_argument("--variant", choices=VARIANTS, help="measure one variant, in-process")
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(measure_one(args.variant, args.decoder_size)))
        return 0
    rows = {}
    for variant in VARIANTS:
        command = [sys.executable, "-m", "benchmarks.memory", "--variant", variant]
        command += ["--decoder-size", args.decoder_size]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rows[variant] = json.loads(output.strip().splitlines()[-1])
        print(f"{variant}: measured", file=sys.stderr, flush=True)
    print(f"\n### Resident memory, LLaMA-style decoder {args.decoder_size} (GB, VmRSS)\n")
    print("| variant | " + " | ".join(STAGES) + " | after prefill / fp32 |")
    print("|---" * (len(STAGES) + 2) + "|")
    fp32 = rows["fp32"]["after prefill"]
    for variant, rss in rows.items():
        cells = " | ".join(f"{rss[stage]:.2f}" for stage in STAGES)
        print(f"| {variant} | {cells} | {rss['after prefill'] / fp32:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
