"""quantize(..., calibration=, smooth=True): outlier channels migrate into the weights, folded
into the normalization that produces them, only where the graph allows and where it helps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import quantcore
from tests.accuracy.models import Net, calibration, outlier_net, relative_error
from tests.conftest import fingerprint


def test_smoothing_folds_into_norms_and_lowers_the_error() -> None:
    model = outlier_net()
    before = fingerprint(model)
    plain = quantcore.quantize(model, calibration=calibration(), output="module")
    smoothed = quantcore.quantize(model, calibration=calibration(), smooth=True)
    assert fingerprint(model) == before
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert smoothed.module is not None
    held_out = calibration(2, seed=7)
    assert (
        relative_error(model, smoothed.module, held_out)
        < relative_error(model, plain, held_out) / 3
    )
    accuracy = smoothed.report.accuracy
    assert accuracy is not None
    kept = [line for line in accuracy.smoothed if ": kept" in line]
    assert len(kept) == 4 and any(
        line.startswith("blocks.0.norm -> blocks.0.k, blocks.0.q") for line in kept
    )
    norm = smoothed.module.blocks[0].norm  # type: ignore[index]
    assert not torch.equal(norm.weight, model.blocks[0].norm.weight)  # type: ignore[index]
    assert "smoothed: blocks.0.norm2 -> blocks.0.up: kept" in str(smoothed.report)


def test_a_norm_whose_output_is_also_read_elsewhere_is_not_folded() -> None:
    """Post-norm blocks add the norm's output to the residual: scaling it would change that."""
    torch.manual_seed(0)
    model = Net(post_norm=True).eval()
    result = quantcore.quantize(model, calibration=calibration(), smooth=True)
    assert result.report.accuracy is not None
    lines = result.report.accuracy.smoothed
    assert not any(line.startswith("blocks.0.norm ->") for line in lines)
    assert any(line.startswith("blocks.0.norm2 -> blocks.0.up") for line in lines)
    assert result.module is not None
    assert relative_error(model, result.module, calibration()) < 0.05


class OnePlusNorm(nn.Module):
    """Gemma's RMSNorm computes x * (1 + weight): dividing the weight does not divide the output."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim,), 5.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + self.weight)


def test_a_norm_that_does_not_scale_with_its_weight_is_not_folded() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(OnePlusNorm(32), nn.Linear(32, 8)).eval()
    result = quantcore.quantize(model, calibration=[torch.randn(4, 32)], smooth=True)
    assert result.report.accuracy is not None
    assert any("does not scale with its weight" in line for line in result.report.accuracy.smoothed)
    assert result.module is not None
    assert torch.equal(result.module[0].weight, model[0].weight)  # type: ignore[index]


def test_weight_only_schemes_are_not_smoothed() -> None:
    result = quantcore.quantize(outlier_net(), "fp16", calibration=calibration(), smooth=True)
    assert result.report.accuracy is not None
    assert result.report.accuracy.smoothed == (
        "not applied: scheme 'fp16' quantizes no linear activations",
    )


def test_smoothing_needs_calibration() -> None:
    with pytest.raises(quantcore.AccuracyError, match="smooth"):
        quantcore.quantize(outlier_net(), smooth=True)
