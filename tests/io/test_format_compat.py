"""Files written before the current code still load: ``data/written-by-0.1.0.pt`` was written by
quantcore 0.1.0 (main before the kernel renovation) from a seeded model with an embedding, linear
layers (per-channel, and a per-tensor asymmetric override), a Hugging Face Conv1D and an fp16
override; ``-expected.pt`` holds that model's float weights, an input and 0.1.0's output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from quantcore_int8.cpu_gemms import activation_bits
from torch import nn

import quantcore
from quantcore.plugin import ActivationSpec, Granularity, WeightSpec

DATA = Path(__file__).parent / "data"
OVERRIDES = [
    {"match": "head", "granularity": "per_tensor", "symmetric": False},
    {"match": "mid", "dtype": "fp16"},
]


def _net() -> nn.Module:
    conv1d = pytest.importorskip("transformers.pytorch_utils").Conv1D

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 8)
            self.fc = nn.Linear(8, 8)
            self.norm = nn.LayerNorm(8)
            self.conv1d = conv1d(8, 8)
            self.mid = nn.Linear(8, 8)
            self.head = nn.Linear(8, 4)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.head(self.mid(self.conv1d(self.norm(self.fc(self.embed(t))))))
            return out

    return Net()


def test_file_from_0_1_0_loads_and_computes_what_it_did() -> None:
    """The recorded output came from a CPU with 8-bit activations; where this CPU's int8 GEMMs
    use 7 bits, the loaded model must compute what a model quantized here computes."""
    expected = torch.load(DATA / "written-by-0.1.0-expected.pt", weights_only=True)
    with torch.device("meta"):
        skeleton = _net()
    loaded = quantcore.load(DATA / "written-by-0.1.0.pt", skeleton)
    with torch.no_grad():
        out = loaded(expected["tokens"])
    if activation_bits(ActivationSpec(), torch.device("cpu")) == 8:
        torch.testing.assert_close(out, expected["output"], rtol=1e-5, atol=1e-6)
    model = _net()
    model.load_state_dict(expected["float_state_dict"])
    here = quantcore.quantize(model.eval(), "int8", overrides=OVERRIDES, output="module")
    with torch.no_grad():
        torch.testing.assert_close(out, here(expected["tokens"]), rtol=1e-5, atol=1e-6)
    specs = {layer.name: layer.spec.weight for layer in quantcore.manifest_of(loaded).layers}  # type: ignore[union-attr]
    assert specs["head"] == WeightSpec(Granularity.PER_TENSOR, symmetric=False)
    assert specs["fc"].group_size is None


def test_quantizing_the_same_model_gives_the_same_tensors() -> None:
    expected = torch.load(DATA / "written-by-0.1.0-expected.pt", weights_only=True)
    model = _net()
    model.load_state_dict(expected["float_state_dict"])
    now = quantcore.quantize(model.eval(), "int8", overrides=OVERRIDES).state_dict
    then = quantcore.read_quantized(DATA / "written-by-0.1.0.pt").state_dict
    assert now.keys() == then.keys()
    for key, tensor in then.items():
        assert now[key].dtype == tensor.dtype and torch.equal(now[key], tensor), key
