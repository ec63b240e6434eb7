"""The native recurrent and lookup kernels against independent oracles (tests/oracles.py): what
each layer must compute from its stored int8 weights, by the formulas, in float64. The linear
kernels have theirs in test_int8_oracles.py; these layers run their own native code (a whole
sequence, or a lookup with its reduction), so they get their own.

A recurrent step is checked teacher-forced: the oracle starts from the state the kernel itself
reached, so one step's rounding never has to be chased through the next. Its bound follows the
gates' bound (the linear oracle's, one step per ambiguous rounding) through the step's
nonlinearities, whose slopes are at most 1/4 (sigmoid) and 1 (tanh, relu)."""

from __future__ import annotations

import oracles
import pytest
import torch
from torch import nn

import quantcore
from tests.conftest import ACTIVATION_WIDTHS, use_activation_width

NONLINEAR_ATOL = 2e-6  # float32 sigmoid/tanh of the native code, a few ulp at |value| <= 1


def _quantize(
    module: nn.Module, plugin_manager: quantcore.QuantcorePluginManager
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    result = quantcore.quantize(module, "int8", plugin_manager=plugin_manager)
    assert result.module is not None
    return result.module, result.state_dict


def _gates(
    state: dict[str, torch.Tensor], ih: str, hh: str, x: torch.Tensor, h: torch.Tensor, bits: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input and hidden parts of the gates (float64) and their bounds; activations per token,
    symmetric, as docs/schemes.md states for recurrent layers."""
    parts = []
    for prefix, value in ((ih, x), (hh, h)):
        oracle = oracles.int8_linear(
            value,
            state[f"{prefix}.weight"],
            state[f"{prefix}.weight_scale"],
            state.get(f"{prefix}.bias"),
            bits=bits,
            symmetric=True,
        )
        parts += [oracle.value, oracle.tolerance()]
    return parts[0], parts[1], parts[2], parts[3]


def _step(
    mode: str,
    gates: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    h: torch.Tensor,
    c: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step in float64: (h, c) and their bounds."""
    gi, ti, gh, th = gates
    h, c = h.double(), c.double()
    if mode == "LSTM":
        i, f, g, o = (gi + gh).chunk(4, -1)
        t_i, t_f, t_g, t_o = (ti + th).chunk(4, -1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        c_bound = 0.25 * t_f * c.abs() + 0.25 * t_i + t_g
        return h_new, c_new, 0.25 * t_o + c_bound, c_bound
    if mode == "GRU":
        ir, iz, in_ = gi.chunk(3, -1)
        hr, hz, hn = gh.chunk(3, -1)
        t_ir, t_iz, t_in = ti.chunk(3, -1)
        t_hr, t_hz, t_hn = th.chunk(3, -1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        n_bound = t_in + 0.25 * (t_ir + t_hr) * hn.abs() + r * t_hn
        h_new = (1 - z) * n + z * h
        return h_new, c, 0.25 * (t_iz + t_hz) * (n - h).abs() + n_bound, torch.zeros_like(c)
    pre = gi + gh
    h_new = torch.tanh(pre) if mode == "RNN_TANH" else torch.relu(pre)
    return h_new, c, ti + th, torch.zeros_like(c)


def _assert_within(got: torch.Tensor, want: torch.Tensor, bound: torch.Tensor, what: str) -> None:
    excess = (got.double() - want).abs() - bound - NONLINEAR_ATOL
    assert float(excess.max()) <= 0, f"{what}: off by {float(excess.max()):.3g} beyond the bound"


def _served_natively(module: nn.Module) -> None:
    assert "native" in str(getattr(module, "kernel_name", "")), module


CELLS = {
    "LSTM": lambda: nn.LSTMCell(24, 16),
    "GRU": lambda: nn.GRUCell(24, 16),
    "RNN_TANH": lambda: nn.RNNCell(24, 16),
    "RNN_RELU": lambda: nn.RNNCell(24, 16, nonlinearity="relu", bias=False),
}


@pytest.mark.parametrize("width", ACTIVATION_WIDTHS)
@pytest.mark.parametrize("mode", sorted(CELLS))
def test_recurrent_cells_compute_the_oracle_step(
    plugin_manager: quantcore.QuantcorePluginManager,
    monkeypatch: pytest.MonkeyPatch,
    width: str,
    mode: str,
) -> None:
    bits = use_activation_width(width, monkeypatch)
    torch.manual_seed(11)
    cell, state = _quantize(CELLS[mode]().eval(), plugin_manager)
    _served_natively(cell)
    h, c = torch.randn(5, 16) * 0.8, torch.randn(5, 16) * 2
    for step in range(4):
        x = torch.randn(5, 24) * 2
        x[0] = 0.0  # an all-zero row
        x[1, 3] *= 30  # an outlier
        with torch.inference_mode():
            out = cell(x, (h, c)) if mode == "LSTM" else cell(x, h)
        h_new, c_new = out if isinstance(out, tuple) else (out, c)
        want_h, want_c, bound_h, bound_c = _step(mode, _gates(state, "ih", "hh", x, h, bits), h, c)
        _assert_within(h_new, want_h, bound_h, f"{mode} step {step}, h")
        if mode == "LSTM":
            _assert_within(c_new, want_c, bound_c, f"{mode} step {step}, c")
        h, c = h_new, c_new


@pytest.mark.parametrize("width", ACTIVATION_WIDTHS)
@pytest.mark.parametrize(
    ("mode", "make"),
    [
        ("GRU", lambda: nn.GRU(24, 16, batch_first=True)),
        ("RNN_TANH", lambda: nn.RNN(24, 16, batch_first=True)),
        ("RNN_RELU", lambda: nn.RNN(24, 16, nonlinearity="relu", batch_first=True)),
    ],
)
def test_recurrent_sequences_compute_the_oracle_at_every_step(
    plugin_manager: quantcore.QuantcorePluginManager,
    monkeypatch: pytest.MonkeyPatch,
    width: str,
    mode: str,
    make: object,
) -> None:
    """GRU and RNN outputs are their whole state, so every step of a native sequence is
    checked from the state the kernel reached one step before."""
    bits = use_activation_width(width, monkeypatch)
    torch.manual_seed(12)
    layer, state = _quantize(make().eval(), plugin_manager)  # type: ignore[operator]
    _served_natively(layer)
    x = torch.randn(3, 9, 24) * 2
    x[1, 4, 5] *= 25
    h0 = torch.randn(1, 3, 16) * 0.5
    with torch.inference_mode():
        out, _ = layer(x, h0)
    previous = h0[0]
    for t in range(x.shape[1]):
        gates = _gates(state, "linears.ih_l0", "linears.hh_l0", x[:, t], previous, bits)
        want, _, bound, _ = _step(mode, gates, previous, previous)
        _assert_within(out[:, t], want, bound, f"{mode} step {t}")
        previous = out[:, t]


@pytest.mark.parametrize("width", ACTIVATION_WIDTHS)
def test_an_lstm_sequence_step_computes_the_oracle(
    plugin_manager: quantcore.QuantcorePluginManager, monkeypatch: pytest.MonkeyPatch, width: str
) -> None:
    """nn.LSTM's cell state shows only at the end: one-step sequences from given states, both
    directions of a bidirectional layer."""
    bits = use_activation_width(width, monkeypatch)
    torch.manual_seed(13)
    layer, state = _quantize(nn.LSTM(24, 16, bidirectional=True).eval(), plugin_manager)
    _served_natively(layer)
    x = torch.randn(1, 4, 24) * 2
    h0, c0 = torch.randn(2, 4, 16) * 0.5, torch.randn(2, 4, 16) * 2
    with torch.inference_mode():
        _, (h_n, c_n) = layer(x, (h0, c0))
    for direction, suffix in enumerate(("", "_reverse")):
        gates = _gates(
            state, f"linears.ih_l0{suffix}", f"linears.hh_l0{suffix}", x[0], h0[direction], bits
        )
        want_h, want_c, bound_h, bound_c = _step("LSTM", gates, h0[direction], c0[direction])
        _assert_within(h_n[direction], want_h, bound_h, f"h, direction {direction}")
        _assert_within(c_n[direction], want_c, bound_c, f"c, direction {direction}")


def _rows(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """The table as the formula gives it back: (q - zero point) * scale per row, float64."""
    return oracles.dequantize_weight(
        state["weight"], state["weight_scale"], state.get("weight_zero_point"), axis=0
    )


def test_embedding_lookups_compute_the_oracle(
    plugin_manager: quantcore.QuantcorePluginManager,
) -> None:
    torch.manual_seed(14)
    table = nn.Embedding(50, 12)
    with torch.no_grad():
        table.weight[7] *= 40  # a row of its own range
        table.weight[9] = table.weight[9].abs()  # a one-sided row
    layer, state = _quantize(table, plugin_manager)
    _served_natively(layer)
    index = torch.tensor([[7, 9, 0], [49, 7, 7]])
    with torch.inference_mode():
        got = layer(index)
    want = _rows(state)[index]
    assert torch.allclose(got.double(), want, rtol=1e-7, atol=0), float((got - want).abs().max())


@pytest.mark.parametrize(
    ("mode", "weighted"), [("sum", False), ("sum", True), ("mean", False), ("max", False)]
)  # per_sample_weights exist for mode='sum' only (torch's rule)
def test_embedding_bags_compute_the_oracle(
    plugin_manager: quantcore.QuantcorePluginManager, mode: str, weighted: bool
) -> None:
    torch.manual_seed(15)
    layer, state = _quantize(nn.EmbeddingBag(50, 12, mode=mode, padding_idx=3), plugin_manager)
    _served_natively(layer)
    indices = torch.tensor([1, 3, 4, 5, 4, 3, 2, 9, 2, 2, 7])
    offsets = torch.tensor([0, 3, 3, 8])  # an empty bag too
    weights = torch.rand(indices.shape) if weighted else None
    with torch.inference_mode():
        got = layer(indices, offsets, per_sample_weights=weights)
    rows = _rows(state)
    ends = [*offsets.tolist()[1:], indices.numel()]
    for bag, (start, end) in enumerate(zip(offsets.tolist(), ends, strict=True)):
        picked = [i for i in range(start, end) if int(indices[i]) != 3]  # padding takes no part
        if not picked:
            want = torch.zeros(12, dtype=torch.float64)
        elif mode == "max":
            want = rows[indices[picked]].amax(0)
        else:
            scaled = rows[indices[picked]]
            if weights is not None:
                scaled = scaled * weights[picked].double().unsqueeze(1)
            want = scaled.sum(0) / (len(picked) if mode == "mean" else 1)
        magnitude = rows[indices[picked]].abs().sum(0) if picked else want
        assert torch.all((got[bag].double() - want).abs() <= 1e-6 * magnitude + 1e-12), bag
