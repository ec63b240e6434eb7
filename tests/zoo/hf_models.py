"""Hugging Face transformers architectures built from tiny configs.

No hub access: every model is constructed directly from a config with random
weights after ``torch.manual_seed``.  Configs are tiny (hidden 32, 2 layers,
vocab 256) so the whole HF zoo builds and runs in a few seconds.  Attention
uses ``attn_implementation="eager"`` everywhere it is accepted, so results do
not depend on which SDPA/flash backend is picked.

Built and tested with transformers 5.24.0 / torch 2.13.0 (see README.md).
Entries whose class/config cannot be found or that fail to build on the
installed transformers are skipped silently at collection time (see
``_SKIPPED`` for the reason, ``skipped_entries()`` to inspect it).

On transformers 5.24.0 every architecture listed below builds and runs; none had
to be dropped.  Problems hit while writing the configs (all fixed in the config):
  * convnext: ConvNextConfig needs num_stages=len(hidden_sizes) or the build
    fails with IndexError.
  * mobilenet_v2: with the default tf_padding=True (explicit F.pad before each
    conv) the CPU forward took ~2 s even for 32x32 inputs (slow mkldnn path),
    so tf_padding=False, depth_multiplier=0.25, finegrained_output=False.
  * gpt2 / gpt_neo / gptj default bos/eos ids (50256) lie outside the tiny
    vocab and trigger a config warning: set to 0 / 2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from . import ZooEntry

V = 256  # vocab size
B, T = 2, 12  # batch, sequence length

_SKIPPED: dict[str, str] = {}


def skipped_entries() -> dict[str, str]:
    """name -> reason for HF entries that could not be built on this install."""
    hf_entries()
    return dict(_SKIPPED)


# --------------------------------------------------------------------------- helpers


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ids(seed: int, b: int = B, t: int = T, low: int = 3, high: int = V) -> torch.Tensor:
    return torch.randint(low, high, (b, t), generator=_gen(seed))


def _mask(b: int = B, t: int = T, pad_last_row: int = 3) -> torch.Tensor:
    """All-ones attention mask except the last row, right-padded."""
    m = torch.ones(b, t, dtype=torch.long)
    if pad_last_row:
        m[-1, t - pad_last_row :] = 0
    return m


def text_inputs(seed: int, token_type: bool = False, pad: bool = True) -> Callable[[], dict]:
    def make() -> dict:
        d = {"input_ids": _ids(seed), "attention_mask": _mask(pad_last_row=3 if pad else 0)}
        if token_type:
            tt = torch.zeros(B, T, dtype=torch.long)
            tt[:, T // 2 :] = 1
            d["token_type_ids"] = tt
        return d

    return make


def seq2seq_inputs(seed: int) -> Callable[[], dict]:
    def make() -> dict:
        return {
            "input_ids": _ids(seed),
            "attention_mask": _mask(),
            "decoder_input_ids": _ids(seed + 1, t=8),
        }

    return make


def image_inputs(seed: int, size: int = 32, channels: int = 3) -> Callable[[], dict]:
    return lambda: {"pixel_values": torch.randn(B, channels, size, size, generator=_gen(seed))}


def audio_inputs(seed: int, n: int = 1600) -> Callable[[], dict]:
    return lambda: {"input_values": torch.randn(B, n, generator=_gen(seed))}


def _runner(attr: str) -> Callable[[nn.Module, Any], torch.Tensor]:
    def run(model: nn.Module, inputs: Any) -> torch.Tensor:
        with torch.no_grad():
            out = model(**inputs) if isinstance(inputs, dict) else model(*inputs)
        return getattr(out, attr) if hasattr(out, attr) else out[attr]

    run.__name__ = f"run_{attr}"
    return run


def _tf(name: str):
    import transformers

    return getattr(transformers, name)


def _available(name: str) -> bool:
    """Whether transformers exports ``name``, WITHOUT importing its modeling module
    (importing ~40 modeling modules up front costs several seconds)."""
    import transformers

    lazy = getattr(transformers, "_class_to_module", None)
    if isinstance(lazy, dict) and lazy:
        return name in lazy or name in vars(transformers)
    return hasattr(transformers, name)


def _builder(model_cls: str, config_cls: str, cfg: dict, seed: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        config = _tf(config_cls)(**cfg)
        torch.manual_seed(seed)
        model = _tf(model_cls)(config)
        model.eval()
        return model

    return build


# --------------------------------------------------------------------------- tiny configs

_BERTISH = dict(
    vocab_size=V,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    attn_implementation="eager",
)
_LLAMAISH = dict(
    vocab_size=V,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    use_cache=False,
    attn_implementation="eager",
)
_BARTISH = dict(
    vocab_size=V,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    max_position_embeddings=64,
    use_cache=False,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    decoder_start_token_id=2,
    attn_implementation="eager",
)
_W2V = dict(
    vocab_size=32,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    conv_dim=(16, 16, 16),
    conv_stride=(5, 4, 2),
    conv_kernel=(10, 4, 2),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    attn_implementation="eager",
)

# name, model class, config class, config kwargs, inputs factory, output attr, kinds, notes
_SPECS: list[tuple] = [
    # ---------------------------------------------------------------- encoders
    (
        "hf_bert",
        "BertModel",
        "BertConfig",
        _BERTISH,
        text_inputs(1, token_type=True),
        "last_hidden_state",
        {"linear", "embedding"},
        "BertModel (with pooler), token_type_ids",
    ),
    (
        "hf_roberta",
        "RobertaModel",
        "RobertaConfig",
        dict(_BERTISH, pad_token_id=1),
        text_inputs(2),
        "last_hidden_state",
        {"linear", "embedding"},
        "RobertaModel; position ids derived from padding_idx=1",
    ),
    (
        "hf_xlm_roberta",
        "XLMRobertaModel",
        "XLMRobertaConfig",
        dict(_BERTISH, pad_token_id=1),
        text_inputs(3),
        "last_hidden_state",
        {"linear", "embedding"},
        "XLMRobertaModel",
    ),
    (
        "hf_distilbert",
        "DistilBertModel",
        "DistilBertConfig",
        dict(
            vocab_size=V,
            dim=32,
            n_layers=2,
            n_heads=4,
            hidden_dim=64,
            max_position_embeddings=64,
            attn_implementation="eager",
        ),
        text_inputs(4),
        "last_hidden_state",
        {"linear", "embedding"},
        "DistilBertModel",
    ),
    (
        "hf_albert",
        "AlbertModel",
        "AlbertConfig",
        dict(_BERTISH, embedding_size=16),
        text_inputs(5, token_type=True),
        "last_hidden_state",
        {"linear", "embedding"},
        "AlbertModel: factorised embedding (16) -> hidden 32 projection; ONE shared layer "
        "module applied num_hidden_layers times (weight sharing across depth)",
    ),
    (
        "hf_electra",
        "ElectraModel",
        "ElectraConfig",
        dict(_BERTISH, embedding_size=16),
        text_inputs(6),
        "last_hidden_state",
        {"linear", "embedding"},
        "ElectraModel with embeddings_project Linear(16->32)",
    ),
    (
        "hf_deberta_v2",
        "DebertaV2Model",
        "DebertaV2Config",
        dict(
            _BERTISH,
            relative_attention=True,
            position_buckets=16,
            max_relative_positions=32,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
        ),
        text_inputs(7),
        "last_hidden_state",
        {"linear", "embedding"},
        "DebertaV2Model: disentangled relative attention (rel_embeddings is an nn.Embedding "
        "whose .weight is read directly, never called)",
    ),
    (
        "hf_mpnet",
        "MPNetModel",
        "MPNetConfig",
        dict(_BERTISH, pad_token_id=1),
        text_inputs(8),
        "last_hidden_state",
        {"linear", "embedding"},
        "MPNetModel: relative_attention_bias nn.Embedding",
    ),
    # ---------------------------------------------------------------- decoders
    (
        "hf_gpt2",
        "GPT2LMHeadModel",
        "GPT2Config",
        dict(
            vocab_size=V,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=64,
            use_cache=False,
            bos_token_id=0,
            eos_token_id=2,
            attn_implementation="eager",
        ),
        text_inputs(20),
        "logits",
        {"hf_conv1d", "embedding", "linear"},
        "GPT2LMHeadModel: attention/MLP use transformers Conv1D (weight is [in, out]); "
        "lm_head Linear tied to wte",
    ),
    (
        "hf_gpt_neo",
        "GPTNeoForCausalLM",
        "GPTNeoConfig",
        dict(
            vocab_size=V,
            hidden_size=32,
            num_layers=2,
            num_heads=4,
            intermediate_size=64,
            attention_types=[[["global", "local"], 1]],
            window_size=8,
            max_position_embeddings=64,
            bos_token_id=0,
            eos_token_id=2,
            use_cache=False,
            attn_implementation="eager",
        ),
        text_inputs(21),
        "logits",
        {"linear", "embedding"},
        "GPTNeoForCausalLM: global + local attention layers; q/k/v Linear bias=False",
    ),
    (
        "hf_gptj",
        "GPTJForCausalLM",
        "GPTJConfig",
        dict(
            vocab_size=V,
            n_embd=32,
            n_layer=2,
            n_head=4,
            rotary_dim=4,
            n_positions=64,
            n_inner=64,
            bos_token_id=0,
            eos_token_id=2,
            use_cache=False,
            attn_implementation="eager",
        ),
        text_inputs(22),
        "logits",
        {"linear", "embedding"},
        "GPTJForCausalLM: rotary, parallel attn+MLP, untied head",
    ),
    (
        "hf_gpt_neox",
        "GPTNeoXForCausalLM",
        "GPTNeoXConfig",
        dict(
            vocab_size=V,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            rotary_pct=0.5,
            max_position_embeddings=64,
            use_cache=False,
            attn_implementation="eager",
        ),
        text_inputs(23),
        "logits",
        {"linear", "embedding"},
        "GPTNeoXForCausalLM: fused query_key_value Linear",
    ),
    (
        "hf_opt",
        "OPTForCausalLM",
        "OPTConfig",
        dict(
            vocab_size=V,
            hidden_size=32,
            num_hidden_layers=2,
            ffn_dim=64,
            num_attention_heads=4,
            word_embed_proj_dim=16,
            max_position_embeddings=64,
            use_cache=False,
            pad_token_id=1,
            attn_implementation="eager",
        ),
        text_inputs(24),
        "logits",
        {"linear", "embedding"},
        "OPTForCausalLM with word_embed_proj_dim=16 != hidden (project_in/project_out Linears); "
        "learned positional embedding with offset",
    ),
    (
        "hf_llama",
        "LlamaForCausalLM",
        "LlamaConfig",
        _LLAMAISH,
        text_inputs(25),
        "logits",
        {"linear", "embedding"},
        "LlamaForCausalLM: GQA (2 kv heads), RMSNorm, SwiGLU, untied head",
    ),
    (
        "hf_llama_tied",
        "LlamaForCausalLM",
        "LlamaConfig",
        dict(_LLAMAISH, tie_word_embeddings=True),
        text_inputs(26),
        "logits",
        {"linear", "embedding"},
        "LlamaForCausalLM with tie_word_embeddings=True (lm_head.weight is embed_tokens.weight)",
    ),
    (
        "hf_mistral",
        "MistralForCausalLM",
        "MistralConfig",
        dict(_LLAMAISH, sliding_window=8),
        text_inputs(27),
        "logits",
        {"linear", "embedding"},
        "MistralForCausalLM, sliding_window=8 < seq len",
    ),
    (
        "hf_qwen2",
        "Qwen2ForCausalLM",
        "Qwen2Config",
        _LLAMAISH,
        text_inputs(28),
        "logits",
        {"linear", "embedding"},
        "Qwen2ForCausalLM: q/k/v Linear with bias, o_proj without",
    ),
    (
        "hf_phi",
        "PhiForCausalLM",
        "PhiConfig",
        dict(_LLAMAISH, num_key_value_heads=4, partial_rotary_factor=0.5),
        text_inputs(29),
        "logits",
        {"linear", "embedding"},
        "PhiForCausalLM: partial rotary, parallel block, biased lm_head",
    ),
    (
        "hf_falcon",
        "FalconForCausalLM",
        "FalconConfig",
        dict(
            vocab_size=V,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            multi_query=True,
            parallel_attn=True,
            bias=False,
            alibi=False,
            use_cache=False,
            attn_implementation="eager",
        ),
        text_inputs(30),
        "logits",
        {"linear", "embedding"},
        "FalconForCausalLM: multi-query, rotary, fused qkv",
    ),
    (
        "hf_bloom",
        "BloomForCausalLM",
        "BloomConfig",
        dict(
            vocab_size=V,
            hidden_size=32,
            n_layer=2,
            n_head=4,
            use_cache=False,
            attn_implementation="eager",
        ),
        text_inputs(31),
        "logits",
        {"linear", "embedding"},
        "BloomForCausalLM: ALiBi, embedding LayerNorm, tied head",
    ),
    (
        "hf_gemma",
        "GemmaForCausalLM",
        "GemmaConfig",
        dict(_LLAMAISH, head_dim=8),
        text_inputs(32),
        "logits",
        {"linear", "embedding"},
        "GemmaForCausalLM: scaled embeddings, tied head",
    ),
    (
        "hf_qwen3",
        "Qwen3ForCausalLM",
        "Qwen3Config",
        dict(_LLAMAISH, head_dim=8),
        text_inputs(33),
        "logits",
        {"linear", "embedding"},
        "Qwen3ForCausalLM: q/k RMSNorm",
    ),
    # ---------------------------------------------------------------- encoder-decoders
    (
        "hf_t5",
        "T5ForConditionalGeneration",
        "T5Config",
        dict(
            vocab_size=V,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            decoder_start_token_id=0,
            pad_token_id=0,
            use_cache=False,
            attn_implementation="eager",
        ),
        seq2seq_inputs(40),
        "logits",
        {"linear", "embedding"},
        "T5ForConditionalGeneration: relative_attention_bias Embedding, ReLU FFN, tied head",
    ),
    (
        "hf_t5_gated",
        "T5ForConditionalGeneration",
        "T5Config",
        dict(
            vocab_size=V,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            decoder_start_token_id=0,
            pad_token_id=0,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            use_cache=False,
            attn_implementation="eager",
        ),
        seq2seq_inputs(41),
        "logits",
        {"linear", "embedding"},
        "T5 v1.1 style: gated-gelu FFN, untied head",
    ),
    (
        "hf_bart",
        "BartForConditionalGeneration",
        "BartConfig",
        _BARTISH,
        seq2seq_inputs(42),
        "logits",
        {"linear", "embedding"},
        "BartForConditionalGeneration: learned positions, tied head",
    ),
    (
        "hf_mbart",
        "MBartForConditionalGeneration",
        "MBartConfig",
        _BARTISH,
        seq2seq_inputs(43),
        "logits",
        {"linear", "embedding"},
        "MBartForConditionalGeneration: pre-LN",
    ),
    (
        "hf_marian",
        "MarianMTModel",
        "MarianConfig",
        dict(_BARTISH, decoder_start_token_id=1),
        seq2seq_inputs(44),
        "logits",
        {"linear", "embedding"},
        "MarianMTModel: sinusoidal positional embedding (an nn.Embedding subclass with fixed "
        "weights), final_logits_bias buffer",
    ),
    (
        "hf_pegasus",
        "PegasusForConditionalGeneration",
        "PegasusConfig",
        dict(_BARTISH, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
        seq2seq_inputs(45),
        "logits",
        {"linear", "embedding"},
        "PegasusForConditionalGeneration: sinusoidal positions, pre-LN",
    ),
    # ---------------------------------------------------------------- vision
    (
        "hf_vit",
        "ViTForImageClassification",
        "ViTConfig",
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
            num_labels=10,
            attn_implementation="eager",
        ),
        image_inputs(50),
        "logits",
        {"conv2d", "linear"},
        "ViT: Conv2d patch embedding (stride=kernel=8)",
    ),
    (
        "hf_deit",
        "DeiTForImageClassificationWithTeacher",
        "DeiTConfig",
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
            num_labels=10,
            attn_implementation="eager",
        ),
        image_inputs(51),
        "logits",
        {"conv2d", "linear"},
        "DeiT with distillation token + two heads",
    ),
    (
        "hf_swin",
        "SwinForImageClassification",
        "SwinConfig",
        dict(
            image_size=32,
            patch_size=4,
            embed_dim=16,
            depths=[1, 1],
            num_heads=[2, 4],
            window_size=4,
            num_labels=10,
            attn_implementation="eager",
        ),
        image_inputs(52),
        "logits",
        {"conv2d", "linear"},
        "Swin: windowed attention with relative_position_bias_table Parameter, patch merging Linear",
    ),
    (
        "hf_convnext",
        "ConvNextForImageClassification",
        "ConvNextConfig",
        dict(
            num_channels=3,
            num_stages=2,
            hidden_sizes=[16, 32],
            depths=[1, 1],
            image_size=32,
            num_labels=10,
        ),
        image_inputs(53),
        "logits",
        {"conv2d", "linear"},
        "ConvNeXt: 7x7 depthwise Conv2d + pointwise nn.Linear on channels-last, layer-scale Parameter",
    ),
    (
        "hf_resnet",
        "ResNetForImageClassification",
        "ResNetConfig",
        dict(
            embedding_size=16,
            hidden_sizes=[16, 32],
            depths=[1, 1],
            layer_type="basic",
            num_labels=10,
        ),
        image_inputs(54),
        "logits",
        {"conv2d", "linear"},
        "ResNet (basic blocks): Conv2d bias=False + BatchNorm",
    ),
    (
        "hf_mobilenet_v2",
        "MobileNetV2ForImageClassification",
        "MobileNetV2Config",
        dict(
            image_size=32,
            depth_multiplier=0.25,
            finegrained_output=False,
            tf_padding=False,
            num_labels=10,
        ),
        image_inputs(55),
        "logits",
        {"conv2d", "linear"},
        "MobileNetV2: inverted residuals with depthwise Conv2d, ReLU6.  tf_padding=False: with the "
        "default TF-style F.pad the CPU forward took ~2 s (slow mkldnn conv path on padded input)",
    ),
    # ---------------------------------------------------------------- audio
    (
        "hf_wav2vec2",
        "Wav2Vec2Model",
        "Wav2Vec2Config",
        _W2V,
        audio_inputs(60),
        "last_hidden_state",
        {"conv1d", "linear"},
        "Wav2Vec2Model: Conv1d feature extractor (GroupNorm), weight_norm'd grouped positional "
        "Conv1d (parametrizations), transformer Linears",
    ),
    (
        "hf_hubert",
        "HubertModel",
        "HubertConfig",
        _W2V,
        audio_inputs(61),
        "last_hidden_state",
        {"conv1d", "linear"},
        "HubertModel: wav2vec2-like",
    ),
    (
        "hf_whisper",
        "WhisperForConditionalGeneration",
        "WhisperConfig",
        dict(
            vocab_size=V,
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            num_mel_bins=16,
            max_source_positions=32,
            max_target_positions=32,
            use_cache=False,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            decoder_start_token_id=3,
            attn_implementation="eager",
        ),
        lambda: {
            "input_features": torch.randn(B, 16, 64, generator=_gen(62)),
            "decoder_input_ids": _ids(63, t=8),
        },
        "logits",
        {"conv1d", "linear", "embedding"},
        "Whisper: 2 Conv1d on log-mel features (16 mels x 64 frames), sinusoidal encoder positions, "
        "decoder Embedding, tied proj_out",
    ),
]


def hf_entries() -> list[ZooEntry]:
    import transformers  # noqa: F401  (caller guarantees it is importable)

    entries: list[ZooEntry] = []
    for i, (name, mcls, ccls, cfg, inputs, attr, kinds, notes) in enumerate(_SPECS):
        missing = [c for c in (mcls, ccls) if not _available(c)]
        if missing:  # class missing on this transformers version
            _SKIPPED[name] = f"transformers has no {', '.join(missing)}"
            continue
        entries.append(
            ZooEntry(
                name=name,
                family="hf",
                build=_builder(mcls, ccls, cfg, 5000 + i),
                make_inputs=inputs,
                run=_runner(attr),
                layer_kinds=frozenset(kinds),
                notes=notes,
            )
        )
    return entries
