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
    """Two linear layers ("0", "2") around an activation, (with_unsupported adds a layer no mapper handles)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def with_unsupported() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.ConvTranspose1d(10, 8, 1), nn.Linear(8, 4))
