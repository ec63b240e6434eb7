"""nn.MultiheadAttention and the transformer layers built on it, INT8 and FP16."""

from __future__ import annotations

import pytest
import torch
from layer_checks import check_error, check_layer, relative_error
from quantcore_layers import QuantizedMultiheadAttention
from torch import nn

import quantcore

SCHEMES = ["int8", "fp16"]


def _mha_inputs(
    batch_first: bool, e: int = 16, kdim: int = 16, vdim: int = 16
) -> tuple[torch.Tensor, ...]:
    def shape(n: int, dim: int) -> tuple[int, int, int]:
        return (2, n, dim) if batch_first else (n, 2, dim)

    return torch.randn(shape(5, e)), torch.randn(shape(7, kdim)), torch.randn(shape(7, vdim))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"batch_first": True},
        {"bias": False},
        {"kdim": 12, "vdim": 10},
        {"add_bias_kv": True, "add_zero_attn": True},
        {"batch_first": True, "add_bias_kv": True},
    ],
    ids=["plain", "batch_first", "no_bias", "kdim_vdim", "bias_kv_zero_attn", "bf_bias_kv"],
)
def test_multihead_attention_variants(scheme: str, options: dict, plugin_manager) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, **options)
    q, k, v = _mha_inputs(
        options.get("batch_first", False), 16, options.get("kdim", 16), options.get("vdim", 16)
    )
    s = k.shape[0] if not options.get("batch_first") else k.shape[1]
    kpm = torch.zeros(2, s, dtype=torch.bool)
    kpm[1, -2:] = True
    attn_mask = torch.triu(torch.ones(5, s, dtype=torch.bool), diagonal=3)
    combos = ((True, True), (True, False), (False, True))
    for need_weights, average in combos if not options else combos[len(options) % 3 :][:1]:
        check_layer(
            mha,
            (q, k, v),
            scheme,
            plugin_manager,
            kinds={"": "attention"},
            call=lambda m, inp, nw=need_weights, av=average: m(
                *inp,
                key_padding_mask=kpm,
                attn_mask=attn_mask,
                need_weights=nw,
                average_attn_weights=av,
            ),
            check_dtype=need_weights and average,
        )


@pytest.mark.parametrize("scheme", SCHEMES)
def test_mha_float_masks_unbatched_and_3d_masks(scheme: str, plugin_manager) -> None:
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(16, 4).eval()
    q = torch.randn(5, 16)
    kv = torch.randn(6, 16)
    float_mask = torch.randn(4, 5, 6)  # (heads, L, S) for unbatched input
    quantized = quantcore.quantize(mha, scheme, output="module", plugin_manager=plugin_manager)
    with torch.no_grad():
        for nw in (True, False):
            expected = mha(q, kv, kv, attn_mask=float_mask, need_weights=nw)
            got = quantized(q, kv, kv, attn_mask=float_mask, need_weights=nw)
            assert got[0].shape == expected[0].shape == (5, 16)
            check_error(scheme, relative_error(got, expected))
            kpm = torch.tensor([False, False, True, False, False, True])
            check_error(
                scheme,
                relative_error(
                    quantized(q, kv, kv, key_padding_mask=kpm, need_weights=nw),
                    mha(q, kv, kv, key_padding_mask=kpm, need_weights=nw),
                ),
            )


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_runs_in_eval_and_train(
    scheme: str, batch_first: bool, norm_first: bool, plugin_manager
) -> None:
    """torch.ao's quantized encoder crashes in eval: the fused fast path gets int8 weights."""
    torch.manual_seed(2)
    layer = nn.TransformerEncoderLayer(
        16, 4, 32, dropout=0.1, batch_first=batch_first, norm_first=norm_first
    )
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
    x = torch.randn(3, 6, 16) if batch_first else torch.randn(6, 3, 16)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[0, -2:] = True  # left aligned: the path that converts to nested tensors
    kinds = {f"layers.{i}.self_attn": "attention" for i in range(2)}
    kinds.update({f"layers.{i}.linear{j}": "linear" for i in range(2) for j in (1, 2)})
    keep = (~padding if batch_first else ~padding.T).unsqueeze(-1)

    def call(m: nn.Module, inp: tuple[torch.Tensor, ...]) -> torch.Tensor:
        # torch's nested-tensor fast path (float model) zeroes padded positions, the slow path
        # computes them: compare real tokens only
        return m(inp[0], src_key_padding_mask=padding) * keep

    quantized, _, _ = check_layer(
        encoder,
        (x,),
        scheme,
        plugin_manager,
        kinds=kinds,
        call=call,
    )
    for grad in (False, True):  # the fast-path checks differ with grad mode
        with torch.set_grad_enabled(grad):
            out = quantized(x, src_key_padding_mask=padding)
            assert torch.isfinite(
                out[~padding] if batch_first else out.transpose(0, 1)[~padding]
            ).all()
            assert quantized.layers[0](x).shape == x.shape  # the encoder layer on its own
    quantized.train()
    out = quantized(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_transformer_decoder_and_full_transformer(scheme: str, plugin_manager) -> None:
    torch.manual_seed(3)
    model = nn.Transformer(16, 4, 1, 1, 32, dropout=0.0, batch_first=True)
    src, tgt = torch.randn(2, 7, 16), torch.randn(2, 5, 16)
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(5)
    kinds = {
        "encoder.layers.0.self_attn": "attention",
        "decoder.layers.0.self_attn": "attention",
        "decoder.layers.0.multihead_attn": "attention",
    }
    quantized, _, _ = check_layer(
        model,
        (src, tgt),
        scheme,
        plugin_manager,
        kinds=kinds,
        call=lambda m, inp: m(*inp, tgt_mask=tgt_mask, tgt_is_causal=True),
    )
    quantized.train()
    assert quantized(src, tgt, tgt_mask=tgt_mask).shape == tgt.shape


def test_fast_path_is_not_taken_with_int8_weights(plugin_manager) -> None:
    """The fused encoder kernels must never see the quantized module's tensors: in eval mode
    without grad, a plain tensor in place of the marker sends TransformerEncoderLayer into
    torch._transformer_encoder_layer_fwd (AttributeError / int8 weights used as floats)."""
    layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True).eval()
    quantized = quantcore.quantize(layer, "int8", output="module", plugin_manager=plugin_manager)
    attention = quantized.self_attn
    assert isinstance(attention, QuantizedMultiheadAttention)
    assert torch.overrides.has_torch_function((attention.in_proj_weight,))
    assert torch.overrides.has_torch_function((attention.in_proj_bias,))
    assert "in_proj_weight" not in quantized.state_dict()
    calls: list[int] = []
    original = attention.q_proj.forward
    attention.q_proj.forward = lambda x: (calls.append(1), original(x))[1]  # type: ignore[method-assign]
    with torch.no_grad():
        quantized(torch.randn(2, 4, 16))
    assert calls, "the quantized projections were bypassed"
