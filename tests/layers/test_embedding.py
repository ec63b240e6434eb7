"""nn.Embedding and nn.EmbeddingBag (weight-only), INT8 and FP16."""

from __future__ import annotations

import pytest
import torch
from layer_checks import check_error, check_layer, relative_error
from quantcore_layers import QuantizedEmbedding
from torch import nn

import quantcore

SCHEMES = ["int8", "fp16"]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(
    "options", [{}, {"padding_idx": 0}, {"max_norm": 1.0}, {"max_norm": 2.0, "norm_type": 1.0}]
)
def test_embedding(scheme: str, options: dict, plugin_manager) -> None:
    torch.manual_seed(0)
    model = nn.Embedding(40, 12, **options)
    tokens = torch.randint(0, 40, (3, 9))
    tokens[0, 0] = 0
    quantized, report, _ = check_layer(
        model, (tokens,), scheme, plugin_manager, kinds={"": "embedding"}, check_dtype=not options
    )
    assert isinstance(quantized, QuantizedEmbedding)
    if "max_norm" in options:
        assert any("max_norm" in note for note in report.layers[0].notes)
        with torch.no_grad():
            norms = quantized(tokens).norm(p=options.get("norm_type", 2.0), dim=-1)
        assert float(norms.max()) <= options["max_norm"] * 1.01


def test_embedding_int8_is_per_row_asymmetric(plugin_manager) -> None:
    torch.manual_seed(1)
    model = nn.Embedding(10, 8)
    with torch.no_grad():
        model.weight[3] = torch.linspace(5.0, 6.0, 8)  # a row far from zero: needs its offset
    quantized = quantcore.quantize(model, "int8", output="module", plugin_manager=plugin_manager)
    assert quantized._buffers["weight"].dtype == torch.int8
    assert quantized.weight_scale.shape == (10,)
    assert quantized.weight_zero_point.shape == (10,)
    row = quantized(torch.tensor([3]))[0]
    # asymmetric: step (6-0)/255; a symmetric per-row scale would give a step of 6/127
    assert float((row - model.weight[3].detach()).abs().max()) <= 6.0 / 255 / 2 + 1e-6


def test_embedding_dtype_follows_module(plugin_manager) -> None:
    model = nn.Embedding(20, 8).to(torch.bfloat16)
    for scheme in SCHEMES:
        quantized = quantcore.quantize(
            model, scheme, output="module", plugin_manager=plugin_manager
        )
        out = quantized(torch.tensor([[1, 2, 3]]))
        assert out.dtype == torch.bfloat16
        check_error(scheme, relative_error(out.float(), model(torch.tensor([[1, 2, 3]])).float()))
        assert quantized.float()(torch.tensor([1])).dtype == torch.float32


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize(
    "options", [{}, {"padding_idx": 2}, {"max_norm": 1.0}, {"include_last_offset": True}]
)
def test_embedding_bag_offsets(scheme: str, mode: str, options: dict, plugin_manager) -> None:
    torch.manual_seed(2)
    model = nn.EmbeddingBag(30, 10, mode=mode, **options)
    indices = torch.tensor([1, 2, 4, 5, 4, 3, 2, 9, 2, 2, 7])
    offsets = torch.tensor([0, 3, 8, 10] if options.get("include_last_offset") else [0, 3, 8])
    check_layer(
        model,
        (indices, offsets),
        scheme,
        plugin_manager,
        kinds={"": "embedding_bag"},
        check_dtype=not options and mode == "mean",
    )


@pytest.mark.parametrize("scheme", SCHEMES)
def test_embedding_bag_2d_input_and_per_sample_weights(scheme: str, plugin_manager) -> None:
    torch.manual_seed(3)
    bag = nn.EmbeddingBag(30, 10, mode="sum")
    indices = torch.randint(0, 30, (4, 5))
    weights = torch.rand(4, 5)
    check_layer(bag, (indices, None, weights), scheme, plugin_manager, kinds={"": "embedding_bag"})
    mean_bag = nn.EmbeddingBag(30, 10, mode="mean")
    check_layer(mean_bag, (indices,), scheme, plugin_manager, kinds={"": "embedding_bag"})
    # empty bags give zeros, as in torch
    quantized = quantcore.quantize(bag, scheme, output="module", plugin_manager=plugin_manager)
    empty = quantized(torch.tensor([], dtype=torch.long), torch.tensor([0, 0]))
    assert torch.equal(empty, torch.zeros(2, 10))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_tied_embedding_and_lm_head(scheme: str, plugin_manager) -> None:
    """Tied input/output embeddings: shared when both kinds use one spec (fp16), stored twice with
    the reason in the report when their specs differ (int8: per-row asymmetric vs symmetric)."""

    class TinyLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(25, 8)
            self.lm_head = nn.Linear(8, 25, bias=False)
            self.lm_head.weight = self.embed.weight

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.lm_head(self.embed(tokens))

    torch.manual_seed(4)
    model = TinyLM().eval()
    tokens = torch.randint(0, 25, (2, 6))
    result = quantcore.quantize(model, scheme, plugin_manager=plugin_manager)
    q = result.module
    assert q is not None
    lines = {line.name: line for line in result.report}
    assert lines["embed"].status == lines["lm_head"].status == "quantized"
    notes = " ".join(lines["lm_head"].notes)
    if scheme == "fp16":
        assert q.embed._buffers["weight"] is q.lm_head._buffers["weight"]
        assert "stays shared" in notes
    else:
        assert q.embed._buffers["weight"] is not q.lm_head._buffers["weight"]
        assert "stored twice" in notes and "embed" in notes
    with torch.no_grad():
        check_error(scheme, relative_error(q(tokens), model(tokens)))
