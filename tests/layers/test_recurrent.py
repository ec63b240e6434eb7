"""nn.LSTM / nn.GRU / nn.RNN and their cells, INT8 and FP16."""

from __future__ import annotations

import pytest
import torch
from layer_checks import check_error, check_layer, relative_error
from quantcore_layers import QuantizedRNN
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import quantcore

SCHEMES = ["int8", "fp16"]


def _make(kind: str, **options: object) -> nn.RNNBase:
    if kind == "lstm":
        return nn.LSTM(6, 8, **options)  # type: ignore[arg-type]
    if kind == "gru":
        return nn.GRU(6, 8, **options)  # type: ignore[arg-type]
    return nn.RNN(6, 8, nonlinearity=kind.split("_")[1], **options)  # type: ignore[arg-type]


VARIANTS = [
    {},
    {"num_layers": 2, "bidirectional": True},
    {"batch_first": True, "bias": False},
    {"num_layers": 2, "batch_first": True, "bidirectional": True, "dropout": 0.2},
]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("variant", range(len(VARIANTS)))
def test_recurrent_variants(scheme: str, kind: str, variant: int, plugin_manager) -> None:
    torch.manual_seed(variant)
    options = VARIANTS[variant]
    model = _make(kind, **options)
    batch_first = bool(options.get("batch_first"))
    x = torch.randn(3, 5, 6) if batch_first else torch.randn(5, 3, 6)
    directions = 2 if options.get("bidirectional") else 1
    layers = int(options.get("num_layers", 1))  # type: ignore[call-overload]
    h0 = torch.randn(layers * directions, 3, 8) * 0.5
    state = (h0, torch.randn(layers * directions, 3, 8) * 0.5) if kind == "lstm" else h0
    check_layer(
        model,
        (x, state),
        scheme,
        plugin_manager,
        kinds={"": "recurrent"},
        check_dtype=variant == 0,
    )


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_packed_sequences_and_unbatched(scheme: str, kind: str, plugin_manager) -> None:
    torch.manual_seed(5)
    model = _make(kind, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(4, 6, 6)
    lengths = torch.tensor([3, 6, 1, 4])  # unsorted: exercises sorted/unsorted indices
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    quantized, _, _ = check_layer(
        model, (packed,), scheme, plugin_manager, kinds={"": "recurrent"}, check_dtype=False
    )
    with torch.no_grad():
        out, _ = quantized(packed)
        assert torch.equal(out.batch_sizes, packed.batch_sizes)
        assert torch.equal(out.unsorted_indices, packed.unsorted_indices)
        # unbatched input: (seq, features), state without the batch dimension
        h0 = torch.zeros(4, 8)
        state = (h0, h0) if kind == "lstm" else h0
        expected = model(x[1], state)
        got = quantized(x[1], state)
        assert tensor_shapes(got) == tensor_shapes(expected)
        check_error(scheme, relative_error(got, expected))


def tensor_shapes(output: object) -> list[tuple[int, ...]]:
    from layer_checks import tensors_of

    return [tuple(t.shape) for t in tensors_of(output)]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_proj_size(scheme: str, bidirectional: bool, plugin_manager) -> None:
    torch.manual_seed(6)
    model = nn.LSTM(6, 8, num_layers=2, proj_size=4, bidirectional=bidirectional)
    d = 2 if bidirectional else 1
    x = torch.randn(5, 3, 6)
    state = (torch.randn(2 * d, 3, 4), torch.randn(2 * d, 3, 8))
    quantized, _, _ = check_layer(
        model, (x, state), scheme, plugin_manager, kinds={"": "recurrent"}
    )
    assert isinstance(quantized, QuantizedRNN)
    assert "hr_l1" in quantized.linears
    lengths = torch.tensor([5, 2, 4])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    with torch.no_grad():
        check_error(scheme, relative_error(quantized(packed, state), model(packed, state)))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("cell", [nn.LSTMCell, nn.GRUCell, nn.RNNCell])
@pytest.mark.parametrize("bias", [True, False])
def test_cells(scheme: str, cell: type[nn.Module], bias: bool, plugin_manager) -> None:
    torch.manual_seed(7)
    model = cell(6, 8, bias=bias)
    x = torch.randn(3, 6)
    h = torch.randn(3, 8) * 0.5
    state = (h, torch.randn(3, 8) * 0.5) if cell is nn.LSTMCell else h
    quantized, _, _ = check_layer(
        model, (x, state), scheme, plugin_manager, kinds={"": "recurrent"}
    )
    with torch.no_grad():
        check_error(scheme, relative_error(quantized(x), model(x)))  # no state: zeros
        single = (state[0][0], state[1][0]) if isinstance(state, tuple) else state[0]
        check_error(scheme, relative_error(quantized(x[0], single), model(x[0], single)))


def test_recurrent_in_a_model_with_embedding(plugin_manager) -> None:
    """A classic text model: embedding -> LSTM -> linear; all three kinds quantized."""

    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(30, 6)
            self.rnn = nn.LSTM(6, 8, batch_first=True, bidirectional=True)
            self.head = nn.Linear(16, 5)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(self.embed(tokens))[0])

    torch.manual_seed(8)
    model = Tagger().eval()
    tokens = torch.randint(0, 30, (2, 7))
    result = quantcore.quantize(model, "int8", plugin_manager=plugin_manager)
    kinds = {line.name: line.layer_kind for line in result.report.quantized}
    assert kinds == {"embed": "embedding", "rnn": "recurrent", "head": "linear"}
    assert result.module is not None
    with torch.no_grad():
        check_error("int8", relative_error(result.module(tokens), model(tokens)))


def test_training_mode_applies_dropout_between_layers(plugin_manager) -> None:
    torch.manual_seed(9)
    model = nn.GRU(6, 8, num_layers=2, dropout=0.5).eval()
    quantized = quantcore.quantize(model, "int8", output="module", plugin_manager=plugin_manager)
    x = torch.randn(5, 3, 6)
    with torch.no_grad():
        assert torch.equal(quantized(x)[0], quantized(x)[0])  # eval: deterministic
        quantized.train()
        first, second = quantized(x)[0], quantized(x)[0]
    assert not torch.equal(first, second)  # dropout between the layers is active in training
    assert torch.isfinite(first).all()
