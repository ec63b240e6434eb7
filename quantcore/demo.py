"""The README's main job: quantize an embedded default model and show what happened.

The model is built here from seeded random weights so the demo needs no download; it is a small
transformer-style encoder with a custom layer no plugin knows, so the report shows every status.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from quantcore.api import quantize
from quantcore.plugin_manager import QuantcorePluginManager, create_plugin_manager


class ScaledResidual(nn.Module):
    """A custom layer with its own weight matrix: no mapper knows it, so it is reported skipped."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mix = nn.Parameter(torch.eye(dim) + 0.01 * torch.randn(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed: torch.Tensor = x @ self.mix
        return x + 0.1 * mixed


class Block(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads=4, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        attended: torch.Tensor = self.attn(h, h, h, need_weights=False)[0]
        x = x + attended
        out: torch.Tensor = x + self.down(torch.nn.functional.gelu(self.up(self.norm2(x))))
        return out


class DemoEncoder(nn.Module):
    """Token embeddings, two pre-norm transformer blocks, a custom layer and a classifier head."""

    def __init__(
        self, vocab: int = 1000, dim: int = 128, hidden: int = 512, classes: int = 10
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList([Block(dim, hidden) for _ in range(2)])
        self.custom = ScaledResidual(dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.head(self.norm(self.custom(x)).mean(dim=1))
        return logits


def build_demo_model(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """The default model and an input batch, identical on every call."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = DemoEncoder().eval()
        tokens = torch.randint(0, 1000, (8, 64))
    finally:
        torch.random.set_rng_state(generator_state)
    return model, tokens


def _loaded_schemes(plugin_manager: QuantcorePluginManager | None) -> tuple[str, ...]:
    """Every loaded scheme, the default one first."""
    schemes = (plugin_manager or create_plugin_manager()).registry().schemes.values()
    return tuple(s.name for s in sorted(schemes, key=lambda s: (not s.default, s.name)))


def run_demo(
    dtypes: tuple[str, ...] | None = None, plugin_manager: QuantcorePluginManager | None = None
) -> str:
    """Quantize the default model with each scheme (default: every loaded one); return the text
    the CLI prints."""
    if dtypes is None:
        dtypes = _loaded_schemes(plugin_manager)
    model, tokens = build_demo_model()
    with torch.inference_mode():
        reference = model(tokens)
    lines = [
        "quantcore demo: a 2-block transformer encoder with seeded random weights, "
        f"input {tuple(tokens.shape)} tokens",
        "",
    ]
    for dtype in dtypes:
        start = time.perf_counter()
        result = quantize(model, dtype, plugin_manager=plugin_manager)
        seconds = time.perf_counter() - start
        assert result.module is not None
        with torch.inference_mode():
            output = result.module(tokens)
        error = (output - reference).norm() / reference.norm()
        cosine = torch.nn.functional.cosine_similarity(output.flatten(), reference.flatten(), dim=0)
        lines.append(str(result.report))
        lines.append(
            f"  output vs float: relative error {error.item():.2e}, max abs diff "
            f"{(output - reference).abs().max().item():.2e}, cosine {cosine.item():.6f}; "
            f"quantized in {seconds:.2f} s"
        )
        lines.append("")
    return "\n".join(lines)
