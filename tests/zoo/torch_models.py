"""Hand-written torch.nn models covering every dynamically-quantizable layer kind.

Each entry is tiny (hidden 32-64) and runs in a few milliseconds on CPU.
Builders are seeded (torch.manual_seed before construction) and return models
in eval mode; inputs come from a private torch.Generator so they never disturb
the global RNG.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from . import ZooEntry

# --------------------------------------------------------------------------- helpers


def _builder(factory: Callable[[], nn.Module], seed: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(seed)
        m = factory()
        m.eval()
        return m

    return build


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed))


def _randint(seed: int, high: int, *shape: int, low: int = 0) -> torch.Tensor:
    return torch.randint(low, high, shape, generator=_gen(seed))


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _run_plain(model: nn.Module, inputs: Any) -> torch.Tensor:
    with torch.no_grad():
        return _call(model, inputs)


def _run_first(model: nn.Module, inputs: Any) -> torch.Tensor:
    """For modules returning a tuple (e.g. a bare nn.LSTM): output[0]."""
    with torch.no_grad():
        return _call(model, inputs)[0]


# --------------------------------------------------------------------------- models


class ScaleShift(nn.Module):
    """A custom layer holding its own Parameters (no quantizer knows it)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(dim) * 0.1 + 1.0)
        self.shift = nn.Parameter(torch.randn(dim) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.norm = nn.LayerNorm(64)
        self.custom = ScaleShift(64)
        self.fc2 = nn.Linear(64, 64, bias=False)
        self.head = nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.fc1(x))
        x = self.custom(self.norm(x))
        x = F.relu(self.fc2(x))
        return self.head(x)


class NDQLinearModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.modules.linear.NonDynamicallyQuantizableLinear(32, 48)
        self.fc = nn.Linear(48, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.proj(x)))


class MHAModel(nn.Module):
    def __init__(
        self,
        embed: int = 32,
        heads: int = 4,
        kdim=None,
        vdim=None,
        bias: bool = True,
        batch_first: bool = True,
        self_attn: bool = True,
    ) -> None:
        super().__init__()
        self.self_attn = self_attn
        self.attn = nn.MultiheadAttention(
            embed, heads, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first
        )

    def forward(self, q, k=None, v=None, key_padding_mask=None):
        if self.self_attn:
            k = v = q
        out, _ = self.attn(q, k, v, key_padding_mask=key_padding_mask, need_weights=False)
        return out


class EncoderModel(nn.Module):
    def __init__(self, norm_first: bool) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            32, 4, dim_feedforward=64, dropout=0.1, batch_first=True, norm_first=norm_first
        )
        # enable_nested_tensor only takes effect for post-norm; harmless otherwise
        self.enc = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=not norm_first)

    def forward(self, x, src_key_padding_mask):
        return self.enc(x, src_key_padding_mask=src_key_padding_mask)


class DecoderModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerDecoderLayer(
            32, 4, dim_feedforward=64, dropout=0.1, batch_first=False
        )
        self.dec = nn.TransformerDecoder(layer, num_layers=2, norm=nn.LayerNorm(32))

    def forward(self, tgt, memory):
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[0])
        return self.dec(tgt, memory, tgt_mask=mask, tgt_is_causal=True)


class FullTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.src_emb = nn.Embedding(50, 32)
        self.tgt_emb = nn.Embedding(50, 32)
        self.tf = nn.Transformer(
            d_model=32,
            nhead=4,
            num_encoder_layers=2,
            num_decoder_layers=2,
            dim_feedforward=64,
            dropout=0.1,
            batch_first=True,
        )
        self.out = nn.Linear(32, 50)

    def forward(self, src, tgt):
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        h = self.tf(self.src_emb(src), self.tgt_emb(tgt), tgt_mask=mask, tgt_is_causal=True)
        return self.out(h)


class RecurrentModel(nn.Module):
    """Wraps nn.LSTM / nn.GRU / nn.RNN; returns the sequence output.

    mode: "plain" (x only), "init" (x plus explicit initial states),
    "packed" (x plus lengths -> PackedSequence in, padded tensor out).
    """

    def __init__(self, cls, mode: str = "plain", **kw) -> None:
        super().__init__()
        self.rnn = cls(**kw)
        self.mode = mode
        self.batch_first = kw.get("batch_first", False)

    def forward(self, x, *extra):
        if self.mode == "packed":
            (lengths,) = extra
            packed = pack_padded_sequence(
                x, lengths, batch_first=self.batch_first, enforce_sorted=False
            )
            out, _ = self.rnn(packed)
            out, _ = pad_packed_sequence(
                out,
                batch_first=self.batch_first,
                total_length=x.shape[1 if self.batch_first else 0],
            )
            return out
        if self.mode == "init":
            out, _ = self.rnn(x, extra[0] if len(extra) == 1 else tuple(extra))
            return out
        out, _ = self.rnn(x)
        return out


class CellModel(nn.Module):
    """Unrolls an LSTMCell / GRUCell / RNNCell over the time dimension."""

    def __init__(self, cls, **kw) -> None:
        super().__init__()
        self.cell = cls(**kw)
        self.is_lstm = cls is nn.LSTMCell
        self.head = nn.Linear(kw["hidden_size"], 8)

    def forward(self, x, h0):  # x: (T, B, in), h0: (B, H)
        h = h0
        c = torch.zeros_like(h0)
        outs = []
        for t in range(x.shape[0]):
            if self.is_lstm:
                h, c = self.cell(x[t], (h, c))
            else:
                h = self.cell(x[t], h)
            outs.append(h)
        return self.head(torch.stack(outs))


class EmbeddingModel(nn.Module):
    def __init__(self, **kw) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 32, **kw)
        self.fc = nn.Linear(32, 16)

    def forward(self, ids):
        return self.fc(self.emb(ids))


class EmbeddingBagModel(nn.Module):
    def __init__(self, mode: str, **kw) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(100, 32, mode=mode, **kw)
        self.fc = nn.Linear(32, 8)

    def forward(self, ids, offsets, per_sample_weights=None):
        return self.fc(self.bag(ids, offsets, per_sample_weights=per_sample_weights))


class BareEmbeddingBag2D(nn.Module):
    """EmbeddingBag with 2-D input (fixed-length bags, no offsets)."""

    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(100, 32, mode="mean", padding_idx=0)

    def forward(self, ids):
        return self.bag(ids)


class Conv1dModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(8, 32, kernel_size=3, padding=2, dilation=2)
        self.c2 = nn.Conv1d(
            32, 32, kernel_size=5, groups=4, padding=2, padding_mode="reflect", stride=2
        )
        self.c3 = nn.Conv1d(32, 16, kernel_size=1, bias=False)

    def forward(self, x):
        return self.c3(F.relu(self.c2(F.relu(self.c1(x)))))


class Conv2dModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, kernel_size=3, stride=2, padding=1, padding_mode="reflect")
        self.dw = nn.Conv2d(32, 32, kernel_size=3, padding=1, groups=32)  # depthwise
        self.pw = nn.Conv2d(32, 48, kernel_size=1, bias=False)
        self.grp = nn.Conv2d(
            48, 48, kernel_size=3, padding=2, dilation=2, groups=4, padding_mode="circular"
        )
        self.fc = nn.Linear(48, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.pw(self.dw(x)))
        x = F.relu(self.grp(x))
        return self.fc(x.mean(dim=(2, 3)))


class Conv3dModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv3d(2, 16, kernel_size=3, padding=1, padding_mode="circular", bias=False)
        self.c2 = nn.Conv3d(
            16,
            32,
            kernel_size=(1, 3, 3),
            padding=(0, 2, 2),
            dilation=(1, 2, 2),
            groups=4,
            stride=(1, 2, 2),
        )
        self.dw = nn.Conv3d(32, 32, kernel_size=3, padding=1, groups=32, padding_mode="reflect")

    def forward(self, x):
        return self.dw(F.relu(self.c2(F.relu(self.c1(x)))))


class SharedModule(nn.Module):
    """The same nn.Linear called twice in one forward (weight sharing)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(32, 48)
        self.shared = nn.Linear(48, 48)
        self.out = nn.Linear(48, 16)

    def forward(self, x):
        h = F.relu(self.inp(x))
        h = F.relu(self.shared(h))
        h = torch.tanh(self.shared(h)) + h
        return self.out(h)


class TiedLM(nn.Module):
    """Tiny LM whose output projection shares the input embedding's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(120, 48)
        self.block = nn.Sequential(nn.Linear(48, 96), nn.GELU(), nn.Linear(96, 48))
        self.norm = nn.LayerNorm(48)
        self.lm_head = nn.Linear(48, 120, bias=False)
        self.lm_head.weight = self.emb.weight  # tied

    def forward(self, ids):
        h = self.emb(ids)
        h = self.norm(h + self.block(h))
        return self.lm_head(h)


class WeightNormModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.utils.parametrizations.weight_norm(nn.Linear(32, 64))
        self.fc2 = nn.Linear(64, 16)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class BF16Sub(nn.Module):
    """Submodule kept in bfloat16; casts its input in and its output back out."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 64)
        self.to(torch.bfloat16)

    def forward(self, x):
        return F.gelu(self.fc(x.to(torch.bfloat16))).float()


class BF16Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc_in = nn.Linear(32, 64)
        self.mid = BF16Sub()
        self.fc_out = nn.Linear(64, 16)

    def forward(self, x):
        return self.fc_out(self.mid(F.relu(self.fc_in(x))))


class PosIdModel(nn.Module):
    """Has a non-float (int64) buffer: position ids (and a bool mask buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("position_ids", torch.arange(64, dtype=torch.int64).unsqueeze(0))
        self.register_buffer("causal", torch.ones(64, 64, dtype=torch.bool).tril())
        self.tok = nn.Embedding(100, 32)
        self.pos = nn.Embedding(64, 32)
        self.fc = nn.Linear(32, 32)

    def forward(self, ids):
        t = ids.shape[1]
        h = self.tok(ids) + self.pos(self.position_ids[:, :t])
        h = self.fc(h)
        att = (h @ h.transpose(1, 2)) / h.shape[-1] ** 0.5
        att = att.masked_fill(~self.causal[:t, :t], float("-inf")).softmax(-1)
        return att @ h


# --------------------------------------------------------------------------- entries


def torch_entries() -> list[ZooEntry]:
    E: list[ZooEntry] = []
    seed = [1000]

    def add(name, factory, make_inputs, kinds, notes="", run=_run_plain):
        seed[0] += 1
        E.append(
            ZooEntry(
                name=name,
                family="torch",
                build=_builder(factory, seed[0]),
                make_inputs=make_inputs,
                run=run,
                layer_kinds=frozenset(kinds),
                notes=notes,
            )
        )

    B, T = 4, 10

    # ---- linear
    add(
        "mlp_layernorm_custom",
        MLP,
        lambda: (_randn(1, B, T, 32),),
        {"linear"},
        "Linear(+bias / bias=False) + LayerNorm + custom ScaleShift layer with own nn.Parameters",
    )
    add(
        "nondyn_quantizable_linear",
        NDQLinearModel,
        lambda: (_randn(2, B, 32),),
        {"linear"},
        "nn.modules.linear.NonDynamicallyQuantizableLinear (subclass of Linear) + plain Linear",
    )
    add(
        "bare_linear",
        lambda: nn.Linear(32, 24),
        lambda: (_randn(3, B, 32),),
        {"linear"},
        "root module IS the nn.Linear (quantizers that only swap children miss it)",
    )
    add(
        "shared_module_twice",
        SharedModule,
        lambda: (_randn(4, B, 32),),
        {"linear"},
        "one nn.Linear instance called twice per forward (weight sharing)",
    )
    add(
        "weight_norm_linear",
        WeightNormModel,
        lambda: (_randn(5, B, 32),),
        {"linear"},
        "Linear wrapped by torch.nn.utils.parametrizations.weight_norm (weight is a "
        "parametrization: parametrizations.weight.original0/original1)",
    )
    add(
        "bf16_submodule",
        BF16Model,
        lambda: (_randn(6, B, 32),),
        {"linear"},
        "middle Linear has bfloat16 weights; its parent casts input to bf16 and output back",
    )
    add(
        "int64_buffer_posids",
        PosIdModel,
        lambda: (_randint(7, 100, B, 12),),
        {"embedding", "linear"},
        "int64 position_ids buffer and bool causal-mask buffer",
    )
    add(
        "tied_embedding_lm_head",
        TiedLM,
        lambda: (_randint(8, 120, B, T),),
        {"embedding", "linear"},
        "lm_head.weight IS emb.weight (tied parameters)",
    )

    # ---- multihead attention
    add(
        "mha_packed_batch_first",
        lambda: MHAModel(32, 4, batch_first=True),
        lambda: (_randn(10, B, T, 32),),
        {"multihead_attention"},
        "self-attention, packed in_proj_weight, bias, batch_first=True",
    )
    add(
        "mha_packed_seq_first_nobias",
        lambda: MHAModel(32, 4, bias=False, batch_first=False),
        lambda: (_randn(11, T, B, 32),),
        {"multihead_attention"},
        "self-attention, packed in_proj_weight, bias=False, batch_first=False",
    )
    add(
        "mha_kdim_vdim_seq_first",
        lambda: MHAModel(32, 4, kdim=24, vdim=40, batch_first=False, self_attn=False),
        lambda: (_randn(12, T, B, 32), _randn(13, 7, B, 24), _randn(14, 7, B, 40)),
        {"multihead_attention"},
        "cross-attention, kdim=24, vdim=40 -> separate q/k/v_proj_weight, bias, seq-first",
    )
    add(
        "mha_kdim_vdim_batch_first_nobias_mask",
        lambda: MHAModel(32, 4, kdim=24, vdim=40, bias=False, batch_first=True, self_attn=False),
        lambda: {
            "q": _randn(15, B, T, 32),
            "k": _randn(16, B, 7, 24),
            "v": _randn(17, B, 7, 40),
            "key_padding_mask": torch.arange(7).expand(B, 7) >= torch.tensor([[7], [5], [6], [3]]),
        },
        {"multihead_attention"},
        "separate q/k/v weights, bias=False, batch_first=True, bool key_padding_mask",
    )

    # ---- transformer
    def enc_inputs():
        lengths = torch.tensor([[T], [7], [T], [4]])
        return (_randn(20, B, T, 32), torch.arange(T).expand(B, T) >= lengths)

    add(
        "transformer_encoder_post_norm",
        lambda: EncoderModel(norm_first=False),
        enc_inputs,
        {"multihead_attention", "linear"},
        "nn.TransformerEncoder, norm_first=False, eval+no_grad -> fast path (nested tensor "
        "from src_key_padding_mask; padded positions come back as 0)",
    )
    add(
        "transformer_encoder_pre_norm",
        lambda: EncoderModel(norm_first=True),
        enc_inputs,
        {"multihead_attention", "linear"},
        "nn.TransformerEncoder, norm_first=True, eval+no_grad fast path (no nested tensor)",
    )
    add(
        "transformer_decoder",
        DecoderModel,
        lambda: (_randn(21, T, B, 32), _randn(22, 12, B, 32)),
        {"multihead_attention", "linear"},
        "nn.TransformerDecoder (seq-first) with causal tgt_mask and final LayerNorm",
    )
    add(
        "transformer_full",
        FullTransformer,
        lambda: (_randint(23, 50, B, 12), _randint(24, 50, B, T)),
        {"multihead_attention", "linear", "embedding"},
        "full nn.Transformer (2+2 layers, batch_first) with token embeddings and output Linear",
    )

    # ---- recurrent
    def seq(seed_, batch_first, feat=16):
        return _randn(seed_, B, T, feat) if batch_first else _randn(seed_, T, B, feat)

    rnn_specs = [
        # name, cls, kwargs, kind
        (
            "lstm_2layer_bidir_batch_first",
            nn.LSTM,
            dict(input_size=16, hidden_size=32, num_layers=2, bidirectional=True, batch_first=True),
            "lstm",
        ),
        ("lstm_seq_first", nn.LSTM, dict(input_size=16, hidden_size=32, num_layers=1), "lstm"),
        (
            "lstm_proj_size",
            nn.LSTM,
            dict(input_size=16, hidden_size=48, proj_size=24, num_layers=2, bidirectional=True),
            "lstm",
        ),
        (
            "lstm_nobias",
            nn.LSTM,
            dict(input_size=16, hidden_size=32, num_layers=2, bias=False, batch_first=True),
            "lstm",
        ),
        (
            "gru_2layer_bidir_batch_first",
            nn.GRU,
            dict(input_size=16, hidden_size=32, num_layers=2, bidirectional=True, batch_first=True),
            "gru",
        ),
        (
            "gru_seq_first_nobias",
            nn.GRU,
            dict(input_size=16, hidden_size=32, num_layers=2, bias=False),
            "gru",
        ),
        (
            "rnn_tanh_2layer_bidir",
            nn.RNN,
            dict(input_size=16, hidden_size=32, num_layers=2, bidirectional=True),
            "rnn",
        ),
        (
            "rnn_relu_batch_first",
            nn.RNN,
            dict(
                input_size=16, hidden_size=32, num_layers=2, nonlinearity="relu", batch_first=True
            ),
            "rnn",
        ),
        (
            "rnn_tanh_nobias_batch_first",
            nn.RNN,
            dict(input_size=16, hidden_size=32, bias=False, batch_first=True),
            "rnn",
        ),
    ]
    for i, (name, cls, kw, kind) in enumerate(rnn_specs):
        bf = kw.get("batch_first", False)
        add(
            name,
            (lambda cls=cls, kw=kw: RecurrentModel(cls, **kw)),
            (lambda i=i, bf=bf: (seq(30 + i, bf),)),
            {kind},
            f"{cls.__name__}({kw})",
        )

    # packed sequences (return padded output)
    lengths = torch.tensor([T, 6, 9, 3])
    for i, (name, cls, kw, kind) in enumerate(
        [
            (
                "lstm_packed_sequence",
                nn.LSTM,
                dict(
                    input_size=16,
                    hidden_size=32,
                    num_layers=2,
                    bidirectional=True,
                    batch_first=True,
                ),
                "lstm",
            ),
            (
                "gru_packed_sequence",
                nn.GRU,
                dict(input_size=16, hidden_size=32, num_layers=1, bidirectional=True),
                "gru",
            ),
            (
                "rnn_relu_packed_sequence",
                nn.RNN,
                dict(input_size=16, hidden_size=32, nonlinearity="relu", batch_first=True),
                "rnn",
            ),
        ]
    ):
        bf = kw.get("batch_first", False)
        add(
            name,
            (lambda cls=cls, kw=kw: RecurrentModel(cls, mode="packed", **kw)),
            (lambda i=i, bf=bf: (seq(40 + i, bf), lengths.clone())),
            {kind},
            f"{cls.__name__}({kw}) fed a PackedSequence (unsorted lengths {lengths.tolist()}); "
            "returns the padded output (padding positions are 0)",
        )

    # explicit initial states
    add(
        "lstm_initial_states",
        lambda: RecurrentModel(
            nn.LSTM, mode="init", input_size=16, hidden_size=32, num_layers=2, bidirectional=True
        ),
        lambda: (seq(50, False), _randn(51, 4, B, 32), _randn(52, 4, B, 32)),
        {"lstm"},
        "nn.LSTM called with (h0, c0)",
    )
    add(
        "lstm_proj_initial_states",
        lambda: RecurrentModel(
            nn.LSTM, mode="init", input_size=16, hidden_size=32, proj_size=16, batch_first=True
        ),
        lambda: (seq(53, True), _randn(54, 1, B, 16), _randn(55, 1, B, 32)),
        {"lstm"},
        "nn.LSTM with proj_size=16 called with (h0 [proj dim], c0 [hidden dim])",
    )
    add(
        "gru_initial_state",
        lambda: RecurrentModel(
            nn.GRU, mode="init", input_size=16, hidden_size=32, num_layers=2, batch_first=True
        ),
        lambda: (seq(56, True), _randn(57, 2, B, 32)),
        {"gru"},
        "nn.GRU called with h0",
    )
    add(
        "rnn_initial_state",
        lambda: RecurrentModel(nn.RNN, mode="init", input_size=16, hidden_size=32),
        lambda: (seq(58, False), _randn(59, 1, B, 32)),
        {"rnn"},
        "nn.RNN(tanh) called with h0",
    )
    add(
        "bare_lstm",
        lambda: nn.LSTM(16, 32, num_layers=2, batch_first=True),
        lambda: (seq(60, True),),
        {"lstm"},
        "root module IS the nn.LSTM; run returns output[0]",
        run=_run_first,
    )

    # cells
    for i, (name, cls, kw, kind) in enumerate(
        [
            ("lstm_cell_unrolled", nn.LSTMCell, dict(input_size=16, hidden_size=32), "lstm_cell"),
            ("gru_cell_unrolled", nn.GRUCell, dict(input_size=16, hidden_size=32), "gru_cell"),
            ("rnn_cell_tanh_unrolled", nn.RNNCell, dict(input_size=16, hidden_size=32), "rnn_cell"),
            (
                "rnn_cell_relu_nobias_unrolled",
                nn.RNNCell,
                dict(input_size=16, hidden_size=32, nonlinearity="relu", bias=False),
                "rnn_cell",
            ),
            (
                "lstm_cell_nobias_unrolled",
                nn.LSTMCell,
                dict(input_size=16, hidden_size=32, bias=False),
                "lstm_cell",
            ),
        ]
    ):
        add(
            name,
            (lambda cls=cls, kw=kw: CellModel(cls, **kw)),
            (lambda i=i: (_randn(70 + i, 5, B, 16), _randn(80 + i, B, 32))),
            {kind, "linear"},
            f"{cls.__name__}({kw}) unrolled over 5 steps, then a Linear head",
        )

    # ---- embeddings
    ids = lambda s: (_randint(s, 100, B, T),)  # noqa: E731
    add(
        "embedding_padding_idx",
        lambda: EmbeddingModel(padding_idx=0),
        lambda: (torch.cat([_randint(90, 100, B, T - 3), torch.zeros(B, 3, dtype=torch.long)], 1),),
        {"embedding", "linear"},
        "nn.Embedding(padding_idx=0); inputs contain padding ids",
    )
    add(
        "embedding_max_norm",
        lambda: EmbeddingModel(max_norm=1.0),
        lambda: ids(91),
        {"embedding", "linear"},
        "nn.Embedding(max_norm=1.0): forward renormalises looked-up rows IN PLACE "
        "(idempotent, so repeated runs agree)",
    )
    add(
        "embedding_bag_sum",
        lambda: EmbeddingBagModel("sum"),
        lambda: (_randint(92, 100, 20), torch.tensor([0, 3, 9, 14])),
        {"embedding_bag", "linear"},
        "nn.EmbeddingBag(mode='sum') with 1-D ids + offsets",
    )
    add(
        "embedding_bag_mean",
        lambda: EmbeddingBagModel("mean", include_last_offset=True),
        lambda: (_randint(93, 100, 20), torch.tensor([0, 5, 6, 12, 20])),
        {"embedding_bag", "linear"},
        "nn.EmbeddingBag(mode='mean', include_last_offset=True)",
    )
    add(
        "embedding_bag_max",
        lambda: EmbeddingBagModel("max"),
        lambda: (_randint(94, 100, 20), torch.tensor([0, 2, 10, 11])),
        {"embedding_bag", "linear"},
        "nn.EmbeddingBag(mode='max')",
    )
    add(
        "embedding_bag_per_sample_weights",
        lambda: EmbeddingBagModel("sum", padding_idx=0),
        lambda: (
            torch.cat([_randint(95, 100, 18, low=1), torch.zeros(2, dtype=torch.long)]),
            torch.tensor([0, 4, 9, 15]),
            torch.rand(20, generator=_gen(96)),
        ),
        {"embedding_bag", "linear"},
        "nn.EmbeddingBag(mode='sum', padding_idx=0) with per_sample_weights",
    )
    add(
        "embedding_bag_2d_input",
        BareEmbeddingBag2D,
        lambda: (_randint(97, 100, B, 6),),
        {"embedding_bag"},
        "nn.EmbeddingBag(mode='mean', padding_idx=0) with 2-D ids (no offsets)",
    )

    # ---- convolutions
    add(
        "conv1d_dilation_groups_reflect",
        Conv1dModel,
        lambda: (_randn(100, B, 8, 40),),
        {"conv1d"},
        "Conv1d: dilation=2; groups=4 + stride 2 + padding_mode='reflect'; 1x1 bias=False",
    )
    add(
        "conv2d_depthwise_groups_circular",
        Conv2dModel,
        lambda: (_randn(101, 2, 3, 32, 32),),
        {"conv2d", "linear"},
        "Conv2d: reflect-padded stem, depthwise (groups=C), pointwise bias=False, "
        "groups=4 + dilation=2 + padding_mode='circular', Linear classifier",
    )
    add(
        "conv3d_groups_circular_depthwise",
        Conv3dModel,
        lambda: (_randn(102, 2, 2, 6, 12, 12),),
        {"conv3d"},
        "Conv3d: circular padding bias=False; groups=4 + dilation + stride; depthwise reflect",
    )

    return E
