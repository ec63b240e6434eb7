"""Hugging Face architectures at their base size: 768 wide, 12 heads, 2 layers each (random
weights from configs, no hub), one sequence of 128 tokens, fp32 against quantcore INT8 and FP16
and torch.ao ``quantize_dynamic`` (qint8 and float16), in one process.

    python -m benchmarks.architectures                 # 1 thread
    python -m benchmarks.architectures --threads 2 --only bert,t5

The zoo (``benchmarks.zoo``) covers the same families at toy sizes, where per-call overhead is
the time; here the layers are the size users run. Variants are timed round-robin; each ratio is
the minimum over rounds with the median in brackets, and ``err`` the relative L2 error of the
last hidden state against fp32. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import quantcore
from benchmarks.isa import add_isa_option, rerun_capped_if_asked
from benchmarks.run import machine, relative_error, time_round_robin

LAYERS = 2
WIDE = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12}


def _architectures() -> dict[str, Callable[[], nn.Module]]:
    import transformers as tf

    return {
        "bert": lambda: tf.BertModel(tf.BertConfig(num_hidden_layers=LAYERS)),
        "roberta": lambda: tf.RobertaModel(tf.RobertaConfig(num_hidden_layers=LAYERS)),
        "distilbert": lambda: tf.DistilBertModel(tf.DistilBertConfig(n_layers=LAYERS)),
        "electra": lambda: tf.ElectraModel(
            tf.ElectraConfig(num_hidden_layers=LAYERS, embedding_size=768, **WIDE)
        ),
        "deberta_v2": lambda: tf.DebertaV2Model(tf.DebertaV2Config(num_hidden_layers=LAYERS)),
        "gpt2": lambda: tf.GPT2Model(tf.GPT2Config(n_layer=LAYERS)),
        "opt": lambda: tf.OPTModel(
            tf.OPTConfig(
                num_hidden_layers=LAYERS, hidden_size=768, ffn_dim=3072, num_attention_heads=12
            )
        ),
        "llama": lambda: tf.LlamaModel(
            tf.LlamaConfig(
                num_hidden_layers=LAYERS,
                hidden_size=768,
                intermediate_size=2048,
                num_attention_heads=12,
                num_key_value_heads=12,
            )
        ),
        "t5_encoder": lambda: tf.T5EncoderModel(
            tf.T5Config(num_layers=LAYERS, d_model=768, d_ff=3072, num_heads=12)
        ),
        "bart": lambda: tf.BartModel(tf.BartConfig(encoder_layers=LAYERS, decoder_layers=LAYERS)),
    }


def bench_architecture(name: str, build: Callable[[], nn.Module], rounds: int) -> dict[str, Any]:
    from torch.ao.quantization import quantize_dynamic

    torch.manual_seed(0)
    model = build().eval()
    ids = torch.randint(0, 1000, (1, 128))
    extra = {"decoder_input_ids": ids} if name == "bart" else {}
    variants: dict[str, nn.Module] = {"fp32": model}
    for dtype, ao_dtype in (("int8", torch.qint8), ("fp16", torch.float16)):
        variants[f"quantcore {dtype}"] = quantcore.quantize(model, dtype, output="module")
        with warnings.catch_warnings():  # deprecated: its warnings are not ours to show
            warnings.simplefilter("ignore")
            variants[f"torch.ao {dtype}"] = quantize_dynamic(model, {nn.Linear}, dtype=ao_dtype)

    def run(module: nn.Module) -> torch.Tensor:
        out: torch.Tensor = module(input_ids=ids, **extra)[0]
        return out

    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outputs = {variant: run(module) for variant, module in variants.items()}
        times = time_round_robin(
            {variant: (lambda m=module: run(m)) for variant, module in variants.items()},
            rounds,
            budget_s=60.0,
        )
    row: dict[str, Any] = {"model": name, "fp32 ms": times["fp32"][0] * 1e3}
    for dtype in ("int8", "fp16"):
        ours, theirs, fp32 = times[f"quantcore {dtype}"], times[f"torch.ao {dtype}"], times["fp32"]
        row[f"{dtype} / fp32"] = (ours[0] / fp32[0], ours[1] / fp32[1])
        row[f"{dtype} / torch.ao"] = (ours[0] / theirs[0], ours[1] / theirs[1])
        row[f"{dtype} error"] = relative_error(outputs[f"quantcore {dtype}"], outputs["fp32"])
        row[f"torch.ao {dtype} error"] = relative_error(
            outputs[f"torch.ao {dtype}"], outputs["fp32"]
        )
    return row


def _pair(value: tuple[float, float]) -> str:
    return f"{value[0]:.2f} ({value[1]:.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", default="", help="comma-separated names")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    add_isa_option(parser)
    args = parser.parse_args(argv)
    rerun_capped_if_asked(args.isa, "benchmarks.architectures", argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("quantcore").setLevel(logging.ERROR)  # layers kept float are expected
    architectures = _architectures()
    names = args.only.split(",") if args.only else list(architectures)
    unknown = sorted(set(names) - set(architectures))
    if unknown:
        parser.error(f"unknown architectures {unknown}; known: {', '.join(architectures)}")
    print(json.dumps(machine()))
    header = (
        f"{'model':11} {'fp32 ms':>8} | {'int8/fp32':>11} {'int8/ao':>11} {'err':>7} "
        f"{'ao err':>7} | {'fp16/fp32':>11} {'fp16/ao':>11}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for name in names:
        row = bench_architecture(name, architectures[name], args.rounds)
        rows.append(row)
        print(
            f"{name:11} {row['fp32 ms']:8.1f} | {_pair(row['int8 / fp32']):>11} "
            f"{_pair(row['int8 / torch.ao']):>11} {row['int8 error']:7.4f} "
            f"{row['torch.ao int8 error']:7.4f} | {_pair(row['fp16 / fp32']):>11} "
            f"{_pair(row['fp16 / torch.ao']):>11}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
