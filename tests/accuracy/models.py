"""Small models for the accuracy tests: pre-norm blocks whose normalizations carry outlier
channels (compensated in the next linear layers, so the float function is ordinary)."""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, dim: int = 64, post_norm: bool = False) -> None:
        super().__init__()
        self.post_norm = post_norm
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        x = (h if self.post_norm else x) + self.o(torch.tanh(self.q(h)) * self.k(h))
        return x + self.down(torch.relu(self.up(self.norm2(x))))


class Net(nn.Module):
    def __init__(self, post_norm: bool = False) -> None:
        super().__init__()
        self.blocks = nn.Sequential(Block(post_norm=post_norm), Block(post_norm=post_norm))
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


def outlier_net(post_norm: bool = False, factor: float = 40.0) -> Net:
    """Three channels of every norm output are ``factor`` times larger than the rest."""
    torch.manual_seed(0)
    model = Net(post_norm).eval()
    with torch.no_grad():
        for block in model.blocks:
            for norm, readers in ((block.norm, (block.q, block.k)), (block.norm2, (block.up,))):
                norm.weight[:3] *= factor
                norm.bias[:3] *= factor
                for linear in readers:
                    linear.weight[:, :3] /= factor
    return model


def calibration(n: int = 2, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 8, 64, generator=g) for _ in range(n)]


def relative_error(model: nn.Module, quantized: nn.Module, batches: list[torch.Tensor]) -> float:
    with torch.no_grad():
        y = torch.cat([model(x) for x in batches])
        q = torch.cat([quantized(x) for x in batches])
    return float((q - y).norm() / y.norm())
