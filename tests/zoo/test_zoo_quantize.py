"""The model zoo under INT8 (at the CPU's activation width, and at a simulated 7 bits) and FP16:
every entry quantizes, runs, stays within 1.5x its recorded error (tests/zoo/baselines.json, see
tests/baselines.py), leaves the caller's model unchanged, and reports exactly the layers the test
expects as skipped (no silent skips). A handful of small entries run in the default suite; the
rest are marked slow (`make test-slow`; CI runs both)."""

from __future__ import annotations

import pytest
import torch
from baselines import ZOO

import quantcore
from tests.conftest import fingerprint, simulate_saturating_cpu
from tests.zoo import ZooEntry, all_zoo

# Small entries of different architectures that `make test` alone covers: a plain skip, every
# layer family, Hugging Face's Conv1D, tied weights, layers reported skipped or kept float.
DEFAULT_RUN = frozenset(
    {
        "mlp_layernorm_custom",
        "transformer_full",
        "lstm_2layer_bidir_batch_first",
        "gru_cell_unrolled",
        "conv2d_depthwise_groups_circular",
        "embedding_bag_per_sample_weights",
        "hf_gpt2",
        "hf_bart",
        "hf_llama_tied",
    }
)
# "int8-7bit": INT8 on a simulated CPU without AVX512-VNNI (7-bit activations)
VARIANTS = ("int8", "int8-7bit", "fp16")

# zoo layer kind -> quantcore layer kind
KIND = {
    "linear": "linear",
    "hf_conv1d": "linear",
    "multihead_attention": "attention",
    "lstm": "recurrent",
    "gru": "recurrent",
    "rnn": "recurrent",
    "lstm_cell": "recurrent",
    "gru_cell": "recurrent",
    "rnn_cell": "recurrent",
    "embedding": "embedding",
    "embedding_bag": "embedding_bag",
    "conv1d": "conv",
    "conv2d": "conv",
    "conv3d": "conv",
}

_EMBEDDING_SUBCLASSES = "overrides Embedding.forward()"
_NO_MAPPER = "no mapper for"

# entry -> {layer name: part of the expected reason}. Everything else must be quantized or kept.
EXPECTED_SKIPPED: dict[str, dict[str, str]] = {
    "mlp_layernorm_custom": {"custom": _NO_MAPPER},
    "hf_opt": {"model.decoder.embed_positions": _EMBEDDING_SUBCLASSES},
    "hf_gemma": {"model.embed_tokens": _EMBEDDING_SUBCLASSES},
    **{
        name: {
            f"model.{part}": _EMBEDDING_SUBCLASSES
            for part in (
                "shared",
                "encoder.embed_tokens",
                "encoder.embed_positions",
                "decoder.embed_tokens",
                "decoder.embed_positions",
            )
        }
        for name in ("hf_bart", "hf_mbart")
    },
    **{
        name: {
            "model.encoder.embed_positions": _EMBEDDING_SUBCLASSES,
            "model.decoder.embed_positions": _EMBEDDING_SUBCLASSES,
        }
        for name in ("hf_marian", "hf_pegasus")
    },
    "hf_whisper": {"model.decoder.embed_positions": _EMBEDDING_SUBCLASSES},
    # models whose own parameters (cls tokens, position tables, mask embeddings, layer scales)
    # no mapper handles; their child layers are still quantized
    "hf_vit": {"vit.embeddings": _NO_MAPPER},
    "hf_deit": {"deit.embeddings": _NO_MAPPER},
    "hf_swin": {
        f"swin.encoder.layers.{i}.blocks.0.attention.relative_position_bias": _NO_MAPPER
        for i in (0, 1)
    },
    "hf_convnext": {f"convnext.encoder.stages.{i}.layers.0": _NO_MAPPER for i in (0, 1)},
    "hf_wav2vec2": {"": _NO_MAPPER},
    "hf_hubert": {"": _NO_MAPPER},
}

# Kinds the zoo declares but the test expects to stay float in that entry (all of them skipped).
EXPECTED_FLOAT_KINDS = {
    "hf_gemma": {"embedding"},
    "hf_bart": {"embedding"},
    "hf_mbart": {"embedding"},
}


# Kinds a scheme keeps float by default (LayerSpec.keep_reason; docs/schemes.md).
KEPT_BY_SCHEME: dict[str, set[str]] = {"int8": {"conv"}, "fp16": set()}


@pytest.fixture(scope="module")
def manager() -> quantcore.QuantcorePluginManager:
    return quantcore.create_plugin_manager()


def _entries() -> list[object]:
    return [
        pytest.param(e, id=e.name, marks=() if e.name in DEFAULT_RUN else pytest.mark.slow)
        for e in all_zoo()
    ]


def test_the_default_run_covers_every_layer_family() -> None:
    kinds = {KIND[k] for e in all_zoo() if e.name in DEFAULT_RUN for k in e.layer_kinds}
    assert kinds == set(KIND.values())


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("entry", _entries())
def test_zoo_entry(
    entry: ZooEntry,
    variant: str,
    manager: quantcore.QuantcorePluginManager,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if variant == "int8-7bit":
        simulate_saturating_cpu(monkeypatch)
    dtype = variant.split("-")[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the zoo's models are tiny; threads only add noise on a busy box
    try:
        model = entry.build()
        inputs = entry.make_inputs()
        reference = entry.run(model, inputs)
        before = fingerprint(model)
        result = quantcore.quantize(model, dtype, plugin_manager=manager)
        assert fingerprint(model) == before, "the caller's model changed"
        assert result.module is not None
        output = entry.run(result.module, inputs)
    finally:
        torch.set_num_threads(threads)

    assert output.shape == reference.shape and torch.isfinite(output).all()
    ZOO.check(entry.name, dtype, entry.output_error(output, reference))

    skipped = {layer.name: layer.reason or "" for layer in result.report.skipped}
    expected = EXPECTED_SKIPPED.get(entry.name, {})
    assert set(skipped) == set(expected), f"unexpected skips: {skipped}"
    for name, reason in expected.items():
        assert reason in skipped[name], (name, skipped[name])

    quantized_kinds = {layer.layer_kind for layer in result.report.quantized}
    float_kinds = EXPECTED_FLOAT_KINDS.get(entry.name, set()) | KEPT_BY_SCHEME[dtype]
    wanted = {KIND[k] for k in entry.layer_kinds} - float_kinds
    assert wanted <= quantized_kinds, f"kinds not quantized: {wanted - quantized_kinds}"
    kept_kinds = {layer.layer_kind for layer in result.report.kept}
    assert not quantized_kinds & KEPT_BY_SCHEME[dtype], "a kind the scheme keeps was quantized"
    assert {KIND[k] for k in entry.layer_kinds} & KEPT_BY_SCHEME[dtype] <= kept_kinds
    if wanted:
        assert result.report.size_after < result.report.size_before
