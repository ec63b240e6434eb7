"""INT8 and FP16 on small transformer-like models, within 1.5x their recorded errors
(tests/baselines.json, see tests/baselines.py)."""

from __future__ import annotations

import math

import pytest
import torch
from baselines import check_error
from oracles import relative_error
from torch import nn

import quantcore
from quantcore.demo import build_demo_model, run_demo


class LinearAttentionBlock(nn.Module):
    """Self-attention written with plain Linear projections, as most Hugging Face models do."""

    def __init__(self, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.norm1(x)

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        attn = torch.softmax(
            split(self.q(h)) @ split(self.k(h)).transpose(-1, -2) / math.sqrt(d // self.heads), -1
        )
        x = x + self.o((attn @ split(self.v(h))).transpose(1, 2).reshape(b, t, d))
        return x + self.ff(self.norm2(x))


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_linear_attention_model_within_bound(
    dtype: str, plugin_manager: quantcore.QuantcorePluginManager
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*(LinearAttentionBlock() for _ in range(3))).eval()
    x = torch.randn(4, 32, 64)
    result = quantcore.quantize(model, dtype, plugin_manager=plugin_manager)
    assert len(result.report.quantized) == 3 * 6 and not result.report.skipped
    assert result.module is not None
    with torch.no_grad():
        error = relative_error(result.module(x), model(x))
    check_error(dtype, error)
    assert error > 0  # something really was quantized


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_demo_model_within_bound(
    dtype: str, plugin_manager: quantcore.QuantcorePluginManager
) -> None:
    model, tokens = build_demo_model()
    result = quantcore.quantize(model, dtype, plugin_manager=plugin_manager)
    assert result.module is not None
    with torch.no_grad():
        check_error(dtype, relative_error(result.module(tokens), model(tokens)))
    # The custom layer no plugin knows is listed, never silently ignored.
    assert any(line.name == "custom" and line.status == "skipped" for line in result.report)


def test_demo_is_deterministic_and_reports_every_scheme(
    plugin_manager: quantcore.QuantcorePluginManager,
) -> None:
    first, second = build_demo_model(), build_demo_model()
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            first[0].state_dict().values(), second[0].state_dict().values(), strict=True
        )
    )
    text = run_demo(plugin_manager=plugin_manager)
    assert "scheme int8" in text and "scheme fp16" in text and text.count("output vs float") == 2


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_preferred_kernel_matches_reference(
    dtype: str, plugin_manager: quantcore.QuantcorePluginManager
) -> None:
    """Every registered backend for linear agrees with the reference oracle (within 1e-4)."""
    registry = plugin_manager.registry()
    torch.manual_seed(0)
    layer = nn.Linear(96, 48)
    scheme = registry.scheme(dtype)
    candidates = registry.kernel_candidates("linear", scheme.weight_format)
    reference = [b for b in candidates if b.reference]
    assert len(reference) == 1
    quantized = quantcore.quantize(layer, dtype, plugin_manager=plugin_manager, output="module")
    request = quantized._kernel_request()  # type: ignore[operator]
    fast = [b for b in candidates if b.is_available() and b.supports(request)]
    assert len(fast) > 1 or not torch.backends.quantized.supported_engines  # CPU kernels ran
    # token counts on both sides of the few-token/many-token switch inside the CPU backends
    for tokens in (1, 7, 100):
        x = torch.randn(tokens, 96)
        expected = reference[0].prepare(request)(x)
        for backend in fast:
            got = backend.prepare(request)(x)
            assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4), (backend.name, tokens)
