"""The new layer kinds through the state-dict path and through save/load: the same tensors as
the module path, and a working model rebuilt from a float skeleton."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from layer_checks import check_error, relative_error
from torch import nn

import quantcore


class AllKinds(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(30, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.cross = nn.MultiheadAttention(16, 4, kdim=8, vdim=8, batch_first=True)
        self.rnn = nn.LSTM(16, 8, num_layers=2, bidirectional=True, batch_first=True)
        self.cell = nn.GRUCell(16, 16)
        self.conv = nn.Conv1d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 5)

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(tokens)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        x = x + self.cross(x, memory, memory, need_weights=False)[0]
        x = x + self.rnn(x)[0]
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)
        x = self.cell(x[:, -1], x[:, 0])
        return self.head(x)


@pytest.mark.parametrize("scheme", ["int8", "fp16"])
def test_state_dict_and_file_round_trip(scheme: str, tmp_path: Path, plugin_manager) -> None:
    torch.manual_seed(0)
    model = AllKinds().eval()
    tokens, memory = torch.randint(0, 30, (2, 6)), torch.randn(2, 4, 8)
    every = {
        "plugin_manager": plugin_manager,
        "overrides": [{"layer_type": "conv", "dtype": scheme}],
    }
    from_module = quantcore.quantize(model, scheme, **every)  # INT8 convs are opt-in
    from_state = quantcore.quantize(model.state_dict(), scheme, **every)
    assert set(from_module.state_dict) == set(from_state.state_dict)
    for key, tensor in from_module.state_dict.items():
        assert tensor.dtype == from_state.state_dict[key].dtype, key
        assert torch.equal(tensor, from_state.state_dict[key]), key
    kinds = {line.name: line.layer_kind for line in from_module.report.quantized}
    assert kinds == {
        "embed_tokens": "embedding",
        "attn": "attention",
        "cross": "attention",
        "rnn": "recurrent",
        "cell": "recurrent",
        "conv": "conv",
        "head": "linear",
    }

    path = quantcore.save(from_module, tmp_path / "model.pt")
    with torch.device("meta"):
        skeleton = AllKinds()
    loaded = quantcore.load(path, skeleton, plugin_manager=plugin_manager)
    assert from_module.module is not None
    with torch.no_grad():
        expected = from_module.module(tokens, memory)
        assert torch.equal(loaded(tokens, memory), expected)
        check_error(scheme, relative_error(expected, model(tokens, memory)))
