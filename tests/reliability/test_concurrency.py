"""Several threads quantizing different models at once, and several threads running one quantized
model at once, give bit-for-bit the results of serial runs; torch's global settings are left as
they were."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

import quantcore
from quantcore.plugin import QuantizedModule
from reliability.helpers import Tally

pytestmark = pytest.mark.usefixtures("torch_state_unchanged")

THREADS = 4


def model(seed: int) -> nn.Module:
    with torch.random.fork_rng():  # the global generator stays as it was (torch_state_unchanged)
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


@pytest.mark.parametrize("tokens", [5, 100])  # the few-token (fbgemm) and many-token kernels
def test_threads_running_one_quantized_model(
    tally: Tally, monkeypatch: pytest.MonkeyPatch, tokens: int
) -> None:
    quantized = quantcore.quantize(model(0), output="module")
    inputs = [
        torch.randn(tokens, 16, generator=torch.Generator().manual_seed(i)) for i in range(32)
    ]
    # (worker thread?, differentiable path?) of every quantized layer call: an input that
    # requires grad, with grad enabled, takes the reference math instead of the int8 GEMMs
    kernel_calls: list[tuple[bool, bool]] = []
    call_kernel = QuantizedModule._call_kernel

    def spy(self: QuantizedModule, x: torch.Tensor) -> torch.Tensor:
        worker = threading.current_thread() is not threading.main_thread()
        kernel_calls.append((worker, x.requires_grad and torch.is_grad_enabled()))
        return call_kernel(self, x)

    monkeypatch.setattr(QuantizedModule, "_call_kernel", spy)

    def run(x: torch.Tensor) -> torch.Tensor:
        # grad mode is per thread: a worker enters inference mode itself, as a server would;
        # outside it, every layer after the first gets an input that requires grad (from the
        # LayerNorm's parameters) and takes the differentiable reference path instead
        with torch.inference_mode():
            return quantized(x)

    # Serial runs in one worker thread: torch's int8 GEMMs may round floats differently in
    # the main thread (where intra-op threads run) than in any worker thread.
    with ThreadPoolExecutor(1) as pool:
        serial = list(pool.map(run, inputs))
    tally.add("concurrent runs", len(inputs))
    with ThreadPoolExecutor(THREADS) as pool:
        parallel = list(pool.map(run, inputs))
    with torch.inference_mode():
        main_thread = [quantized(x) for x in inputs]
    assert set(kernel_calls) == {(True, False), (False, False)}  # int8 GEMMs, in every thread
    assert all(torch.equal(s, p) for s, p in zip(serial, parallel, strict=True))
    assert all(
        torch.allclose(s, m, rtol=1e-5, atol=1e-6) for s, m in zip(serial, main_thread, strict=True)
    )
