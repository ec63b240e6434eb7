"""Resident memory of transformers' from_pretrained with quantcore, next to a float load.

    python -m benchmarks.load_memory                      # ~100M LLaMA-style decoder, 4 shards
    python -m benchmarks.load_memory --decoder-size 300m

Builds the decoder with random weights, saves it as a sharded float checkpoint (and a quantcore
INT8 folder), then loads each variant in its own process: the float checkpoint as it is, the
float checkpoint with ``quantization_config=QuantcoreConfig(dtype="int8")`` (quantized while it
is read), and the quantcore folder. It prints, above the process's baseline once the libraries
and plugins are loaded, the peak resident set while loading (Linux ``VmHWM``, reset through
``/proc/self/clear_refs``) and the resident set after it (``VmRSS``, after ``malloc_trim``),
next to the model's tensor bytes and the largest shard. Resident memory counts the pages of the
memory-mapped checkpoint that were read. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.run import _release_free_memory, _rss_kib, build_decoder

VARIANTS = ("float", "int8 while loading", "int8 folder")


def _mib(kib: int) -> float:
    return kib / 1024


def measure_one(variant: str, folder: Path) -> dict[str, float]:
    """Run in a fresh process: peak and final resident memory of one load, in MiB."""
    torch.set_num_threads(2)
    import transformers
    from quantcore_transformers.hf_quantizer import QuantcoreConfig

    import quantcore

    tiny = torch.nn.Sequential(torch.nn.Embedding(8, 64), torch.nn.Linear(64, 64))
    quantcore.quantize(tiny, "int8", log_level="ERROR")  # plugins loaded before the baseline
    _release_free_memory()
    Path("/proc/self/clear_refs").write_text("5")  # the peak starts from here
    base = _rss_kib("VmRSS")
    kwargs = {"quantization_config": QuantcoreConfig(dtype="int8")} if "while" in variant else {}
    source = folder / ("int8" if variant == "int8 folder" else "float")
    model = transformers.AutoModelForCausalLM.from_pretrained(source, **kwargs)
    peak = _rss_kib("VmHWM")
    _release_free_memory()
    tensors = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return {
        "peak": _mib(peak - base),
        "after": _mib(_rss_kib("VmRSS") - base),
        "model": tensors / 2**20,
    }


def _prepare(folder: Path, size: str, shard: str) -> None:
    import transformers
    from quantcore_transformers.hf_quantizer import QuantcoreConfig

    build_decoder(size).save_pretrained(folder / "float", max_shard_size=shard)
    quantized = transformers.AutoModelForCausalLM.from_pretrained(
        folder / "float", quantization_config=QuantcoreConfig(dtype="int8")
    )
    quantized.save_pretrained(folder / "int8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder-size", default="100m", choices=("100m", "300m", "1b"))
    parser.add_argument("--shard-size", default="100MB")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure_one(args.child[0], Path(args.child[1]))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _prepare(folder, args.decoder_size, args.shard_size)
        shards = list((folder / "float").glob("*.safetensors"))
        print(
            f"decoder {args.decoder_size}: float checkpoint "
            f"{sum(p.stat().st_size for p in shards) / 2**20:.0f} MiB in {len(shards)} shard(s), "
            f"largest {max(p.stat().st_size for p in shards) / 2**20:.0f} MiB"
        )
        print(f"{'variant':<20} {'model MiB':>10} {'peak MiB':>10} {'after MiB':>10}")
        for variant in VARIANTS:
            command = [sys.executable, "-m", "benchmarks.load_memory", "--child", variant, tmp]
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{variant:<20} {row['model']:>10.0f} {row['peak']:>10.0f} {row['after']:>10.0f}")


if __name__ == "__main__":
    main()
