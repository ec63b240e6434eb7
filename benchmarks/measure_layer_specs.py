"""Measure the relative output error of int8 spec choices per layer kind on small random models.

Run: python -m benchmarks.measure_layer_specs   (CPU, about a minute). docs/schemes.md quotes it.
Each variant is a throwaway scheme registered on a fresh plugin manager, so the measured numbers
go through exactly the code users run (mappers, observers, int8 reference kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from quantcore_int8.quantization import dequantize_weight, quantize_weight
from torch import nn

import quantcore
from quantcore.plugin import ActivationSpec, Granularity, LayerSpec, WeightSpec

PC, PT, TOK = Granularity.PER_CHANNEL, Granularity.PER_TENSOR, Granularity.PER_TOKEN


def manager_with(kind: str, spec: LayerSpec) -> quantcore.QuantcorePluginManager:
    class Probe:
        @quantcore.plugin.hookimpl
        def quantcore_schemes(self) -> Iterator[quantcore.plugin.Scheme]:
            yield quantcore.plugin.Scheme(
                name="probe",
                weight_format="int8",
                layer_specs={kind: spec},
                quantize_weight=quantize_weight,
                dequantize_weight=dequantize_weight,
            )

    manager = quantcore.create_plugin_manager()
    manager.register_plugin(Probe(), "probe")
    return manager


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def measure(
    kind: str,
    spec: LayerSpec,
    build: Callable[[int], tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]],
) -> float:
    errors = []
    for seed in range(3):
        torch.manual_seed(seed)
        model, run = build(seed)
        model.eval()
        q = quantcore.quantize(
            model, "probe", output="module", plugin_manager=manager_with(kind, spec)
        )
        with torch.no_grad():
            errors.append(rel(run(q), run(model)))
    return sum(errors) / len(errors)


def w(granularity: Granularity, symmetric: bool) -> WeightSpec:
    return WeightSpec(granularity, symmetric=symmetric, observer="minmax", axis=0)


def a(granularity: Granularity, symmetric: bool) -> ActivationSpec:
    return ActivationSpec(granularity, symmetric=symmetric)


def attention(_: int) -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    mha = nn.MultiheadAttention(64, 4, batch_first=True)
    x = torch.randn(4, 16, 64)
    return mha, lambda m: m(x, x, x, need_weights=False)[0]


def lstm(_: int) -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    model = nn.LSTM(32, 64, num_layers=2)
    x = torch.randn(20, 4, 32)
    return model, lambda m: m(x)[0]


def gru(_: int) -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    model = nn.GRU(32, 64, num_layers=2)
    x = torch.randn(20, 4, 32)
    return model, lambda m: m(x)[0]


def conv_relu(_: int) -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    model = nn.Conv2d(16, 32, 3, padding=1)
    x = (
        torch.relu(torch.randn(4, 16, 16, 16)) * torch.rand(4, 1, 1, 1) * 4
    )  # samples differ in scale
    return model, lambda m: m(x)


def conv_raw(_: int) -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    model = nn.Conv2d(3, 32, 3, padding=1)
    x = torch.randn(4, 3, 32, 32) + 0.5
    return model, lambda m: m(x)


def embedding_centered(_: int) -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    model = nn.Embedding(1000, 64)
    tokens = torch.randint(0, 1000, (8, 32))
    return model, lambda m: m(tokens)


def embedding_offset(_: int) -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    model = nn.Embedding(1000, 64)
    with torch.no_grad():  # rows with their own offset and spread, as trained tables have
        model.weight.mul_(torch.rand(1000, 1) * 1.3 + 0.2).add_(torch.randn(1000, 1) * 0.5)
    tokens = torch.randint(0, 1000, (8, 32))
    return model, lambda m: m(tokens)


def main() -> None:
    weight_variants = [
        ("per_channel sym", w(PC, True)),
        ("per_channel asym", w(PC, False)),
        ("per_tensor sym", w(PT, True)),
    ]
    act_variants = [
        ("per_token sym", a(TOK, True)),
        ("per_token asym", a(TOK, False)),
        ("per_tensor sym", a(PT, True)),
        ("per_tensor asym", a(PT, False)),
    ]
    rows = []
    for kind, name, build in [
        ("attention", "MultiheadAttention(64, 4)", attention),
        ("recurrent", "LSTM(32, 64, 2 layers), 20 steps", lstm),
        ("recurrent", "GRU(32, 64, 2 layers), 20 steps", gru),
        ("conv", "Conv2d(16, 32, 3), post-ReLU input", conv_relu),
        ("conv", "Conv2d(3, 32, 3), raw input", conv_raw),
    ]:
        for wname, wspec in weight_variants:
            for aname, aspec in act_variants if wname == "per_channel sym" else act_variants[:1]:
                if kind == "conv":
                    aname = aname.replace("per_token", "per_sample")
                err = measure(kind, LayerSpec(wspec, aspec), build)
                rows.append((name, f"w {wname}, a {aname}", err))
    for name, build in [
        ("Embedding(1000, 64), N(0, 1) rows", embedding_centered),
        ("Embedding(1000, 64), rows with own offset/scale", embedding_offset),
    ]:
        for wname, wspec in [*weight_variants, ("per_tensor asym", w(PT, False))]:
            err = measure("embedding", LayerSpec(wspec, None), build)
            rows.append((name, f"w {wname}", err))
    print("| model | spec | relative error (mean of 3 seeds) |\n|---|---|---|")
    for name, spec, err in rows:
        print(f"| {name} | {spec} | {err:.4f} |")


if __name__ == "__main__":
    main()
