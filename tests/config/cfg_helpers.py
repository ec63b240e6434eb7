"""Helpers shared by the configuration tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def write_user_config(home: Path, text: str) -> Path:
    path = home / "quantcore" / "config.toml"
    path.write_text(text)
    return path


def small_model() -> nn.Module:
    """Two linear layers ("0", "2") around an activation, plus an embedding no mapper handles."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def with_embedding() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 4))
