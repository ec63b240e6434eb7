"""Hugging Face transformers' Conv1D (GPT-2 family), through the quantcore_transformers plugin."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch
from layer_checks import check_error, check_layer, relative_error

import quantcore

SCHEMES = ["int8", "fp16"]


def test_plugin_imports_nothing_from_transformers() -> None:
    code = (
        "import sys, quantcore_transformers, quantcore; quantcore.create_plugin_manager().registry();"
        "print('transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_mapper_without_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    import quantcore_transformers

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "transformers" else real_find_spec(name, *a),
    )
    assert list(quantcore_transformers.quantcore_layer_mappers()) == []
    registry = quantcore.create_plugin_manager().registry()
    assert "hf_conv1d" not in {m.name for m in registry.layer_mappers}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_conv1d_layer(scheme: str, plugin_manager) -> None:
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    layer = Conv1D(24, 16)  # nf=24 outputs, nx=16 inputs; weight [16, 24]
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(2, 5, 16)
    quantized, report, _ = check_layer(layer, (x,), scheme, plugin_manager, kinds={"": "linear"})
    assert report.layers[0].mapper == "hf_conv1d"
    if scheme == "int8":
        assert quantized.weight.shape == (24, 16)
        assert quantized.weight_scale.shape == (24,)  # per output feature


@pytest.mark.parametrize("scheme", SCHEMES)
def test_tiny_gpt2(scheme: str, plugin_manager) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    config = transformers.GPT2Config(
        vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4, tie_word_embeddings=True
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    tokens = torch.randint(0, 64, (2, 10))
    result = quantcore.quantize(model, scheme, plugin_manager=plugin_manager)
    lines = {line.name: line for line in result.report}
    for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
        assert lines[f"transformer.h.0.{name}"].status == "quantized"
        assert lines[f"transformer.h.0.{name}"].mapper == "hf_conv1d"
    assert lines["transformer.wte"].layer_kind == "embedding"
    assert lines["lm_head"].status == "quantized"
    assert lines["lm_head"].notes, "the tie between wte and lm_head must be reported"
    assert not result.report.skipped
    assert result.module is not None
    with torch.no_grad():
        expected = model(tokens).logits
        got = result.module(tokens).logits
    check_error(scheme, relative_error(got, expected))
