"""quantcore.load with skeletons built on the meta device, and strict=False."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from hf_helpers import BUILDERS, run
from torch import nn

import quantcore

pytest.importorskip("transformers")


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_meta_skeleton_of_a_transformers_model_loads(tmp_path: Path, name: str) -> None:
    """Llama's rotary inv_freq and BERT's position_ids are non-persistent buffers: on a meta
    skeleton they have no values; load recomputes them (BERT returned NaN, Llama crashed)."""
    model = BUILDERS[name]()
    result = quantcore.quantize(model, "int8")
    path = quantcore.save(result, tmp_path / "q.safetensors")
    with torch.device("meta"):
        skeleton = type(model)(model.config)
    loaded = quantcore.load(path, skeleton)
    # (before any call: a packed kernel later lets the plain weight go, leaving a meta stand-in)
    assert all(not t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    out = run(loaded)
    assert not out.isnan().any()
    assert torch.equal(out, run(result.module))
    assert all(t.is_meta for t in skeleton.parameters())  # the skeleton is not modified


class _WithBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.register_buffer("scale", torch.full((8,), 2.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.scale


def test_meta_buffer_no_library_can_recompute_is_an_error(tmp_path: Path) -> None:
    path = quantcore.save(quantcore.quantize(_WithBuffer(), "int8"), tmp_path / "q.pt")
    with torch.device("meta"):
        skeleton = _WithBuffer()
    with pytest.raises(quantcore.SerializationError, match=r"meta device.*: scale\."):
        quantcore.load(path, skeleton)
    assert quantcore.load(path, _WithBuffer()).scale.eq(2.0).all()  # a CPU skeleton is fine


def test_strict_false_ignores_and_reports_extra_tensors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A legacy checkpoint key (BERT's old persistent embeddings.position_ids) in the file."""
    model = BUILDERS["bert"]()
    quantized = quantcore.quantize(model, "int8")
    state = dict(quantized.state_dict)
    state["embeddings.position_ids"] = torch.arange(64)[None]
    assert quantized.manifest is not None
    path = tmp_path / "q.pt"
    torch.save(
        {
            "format": "quantcore",
            "metadata": {"quantcore": quantized.manifest.to_json()},
            "state_dict": state,
        },
        path,
    )
    with pytest.raises(quantcore.SerializationError, match="strict=False"):
        quantcore.load(path, BUILDERS["bert"]())
    with caplog.at_level(logging.WARNING, logger="quantcore"):
        loaded = quantcore.load(path, BUILDERS["bert"](), strict=False)
    assert "embeddings.position_ids" in caplog.text
    assert torch.equal(run(loaded), run(quantized.module))
