"""Several threads quantizing different models at once, and several threads running one quantized
model at once, give bit-for-bit the results of serial runs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

import quantcore
from reliability.helpers import Tally

THREADS = 4


def model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 8))


def test_threads_quantizing_different_models(tally: Tally) -> None:
    models = [model(seed) for seed in range(8)]
    dtypes = ["int8", "fp16"] * 4
    serial = [quantcore.quantize(m, d).state_dict for m, d in zip(models, dtypes, strict=True)]
    for _ in range(3):
        tally.add("concurrent runs", len(models))
        with ThreadPoolExecutor(THREADS) as pool:
            parallel = list(
                pool.map(
                    lambda a: quantcore.quantize(*a).state_dict, zip(models, dtypes, strict=False)
                )
            )
        for s, p in zip(serial, parallel, strict=True):
            assert s.keys() == p.keys()
            assert all(torch.equal(s[k], p[k]) and s[k].dtype == p[k].dtype for k in s)


def test_threads_running_one_quantized_model(tally: Tally) -> None:
    quantized = quantcore.quantize(model(0), output="module")
    inputs = [torch.randn(5, 16, generator=torch.Generator().manual_seed(i)) for i in range(32)]
    with torch.inference_mode():

        def run(x: torch.Tensor) -> torch.Tensor:
            return quantized(x)

        # Serial runs in one worker thread: torch's int8 GEMMs may round floats differently in
        # the main thread (where intra-op threads run) than in any worker thread.
        with ThreadPoolExecutor(1) as pool:
            serial = list(pool.map(run, inputs))
        tally.add("concurrent runs", len(inputs))
        with ThreadPoolExecutor(THREADS) as pool:
            parallel = list(pool.map(run, inputs))
        main_thread = [quantized(x) for x in inputs]
    assert all(torch.equal(s, p) for s, p in zip(serial, parallel, strict=True))
    assert all(
        torch.allclose(s, m, rtol=1e-5, atol=1e-6) for s, m in zip(serial, main_thread, strict=True)
    )
