"""Tiny transformers models built from configs (seeded random weights, no hub)."""

from __future__ import annotations

import torch
from torch import nn

V = 256


def llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        use_cache=False,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=2
    )
    torch.manual_seed(1)
    return GPT2LMHeadModel(config).eval()


def bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(2)
    return BertModel(config).eval()


BUILDERS = {"llama": llama, "gpt2": gpt2, "bert": bert}


def token_ids() -> torch.Tensor:
    return torch.randint(3, V, (2, 7), generator=torch.Generator().manual_seed(5))


def run(model: nn.Module, ids: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=token_ids() if ids is None else ids)[0]
