"""quantcore export: compressed-tensors W8A8 int8 (vLLM, SGLang, transformers) and hf folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hf_helpers import BUILDERS, run
from quantcore_int8.cpu_gemms import activation_bits

import quantcore
from quantcore.cli import main
from quantcore.plugin import ActivationSpec

transformers = pytest.importorskip("transformers")
safetensors = pytest.importorskip("safetensors.torch")


def _float_folder(tmp_path: Path, name: str) -> tuple[torch.nn.Module, Path]:
    model = BUILDERS[name]()
    folder = tmp_path / f"{name}-float"
    model.save_pretrained(folder)
    return model, folder


def _export(tmp_path: Path, name: str, fmt: str, *extra: str) -> tuple[torch.nn.Module, Path]:
    model, folder = _float_folder(tmp_path, name)
    out = tmp_path / f"{name}-{fmt}"
    assert main(["export", str(folder), "-o", str(out), "--format", fmt, *extra]) == 0
    return model, out


def _is_dynamic_token_w8a8(weights: dict, inputs: dict) -> bool:
    """vLLM's test for CompressedTensorsW8A8Int8 with dynamic per-token inputs."""
    return (
        weights["num_bits"] == inputs["num_bits"] == 8
        and weights["strategy"] in ("tensor", "channel")
        and inputs["strategy"] == "token"
        and not weights["dynamic"]
        and inputs["dynamic"]
        and weights["symmetric"]
    )


def test_compressed_tensors_config_has_every_field_vllm_reads(tmp_path: Path) -> None:
    model, out = _export(tmp_path, "llama", "compressed-tensors")
    qconfig = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qconfig["quant_method"] == "compressed-tensors"
    assert qconfig["format"] == "int-quantized"  # an activation-quantization format
    assert qconfig["ignore"] == ["lm_head"]
    (group,) = qconfig["config_groups"].values()
    assert group["targets"] == ["Linear"]
    weights, inputs = group["weights"], group["input_activations"]
    assert weights["type"] == inputs["type"] == "int"
    assert _is_dynamic_token_w8a8(weights, inputs)
    assert weights["strategy"] == "channel"
    assert inputs["symmetric"] is False  # quantcore's default inputs: per token, asymmetric
    tensors = safetensors.load_file(str(out / "model.safetensors"))
    q_proj = "model.layers.0.self_attn.q_proj"
    assert tensors[f"{q_proj}.weight"].dtype == torch.int8
    assert tensors[f"{q_proj}.weight"].shape == (32, 32)
    assert tensors[f"{q_proj}.weight_scale"].dtype == torch.float32
    assert tensors[f"{q_proj}.weight_scale"].shape == (32, 1)
    assert not any(k.endswith(("input_scale", "zero_point")) for k in tensors)
    # what stays float is the original float checkpoint's tensor
    assert torch.equal(tensors["lm_head.weight"], model.lm_head.weight)
    assert torch.equal(tensors["model.embed_tokens.weight"], model.model.embed_tokens.weight)


def test_compressed_tensors_package_decompresses_to_quantcore_weights(tmp_path: Path) -> None:
    ct = pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig

    model, out = _export(tmp_path, "llama", "compressed-tensors")
    qconfig = json.loads((out / "config.json").read_text())["quantization_config"]
    parsed = QuantizationConfig.model_validate(qconfig)
    scheme = next(iter(parsed.config_groups.values()))
    compressor = BaseCompressor.load_from_registry(qconfig["format"])
    tensors = safetensors.load_file(str(out / "model.safetensors"))
    quantized = quantcore.quantize(model, "int8", output="module")
    name = "model.layers.1.mlp.down_proj"
    local = {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
    weight = compressor.decompress(local, scheme)["weight"]
    assert torch.equal(weight.float(), quantized.get_submodule(name).weight)
    assert ct.__version__


def test_transformers_loads_the_export_with_compressed_tensors(tmp_path: Path) -> None:
    pytest.importorskip("compressed_tensors")
    model, out = _export(tmp_path, "llama", "compressed-tensors")
    dequantized = transformers.AutoModelForCausalLM.from_pretrained(
        out, quantization_config=transformers.CompressedTensorsConfig(dequantize=True)
    )
    reference = quantcore.quantize(model, "int8", exclude=["lm_head", "*embed*"], output="module")
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.gate_proj"):
        assert torch.equal(
            dequantized.get_submodule(name).weight, reference.get_submodule(name).weight
        )
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out)  # activations fake-quantized
    expected, got, float_out = run(reference), run(loaded), run(model)
    if activation_bits(ActivationSpec(), torch.device("cpu")) == 8:  # the export's width too
        assert (got - expected).abs().max() < 0.5 * (expected - float_out).abs().max() + 1e-3
    else:  # quantcore runs 7-bit activations on this CPU; the export keeps 8 (more accurate)
        assert (got - float_out).abs().max() <= (expected - float_out).abs().max() + 1e-3


def test_gpt2_conv1d_layers_are_written_float_and_ignored(tmp_path: Path) -> None:
    model, out = _export(tmp_path, "gpt2", "compressed-tensors")
    qconfig = json.loads((out / "config.json").read_text())["quantization_config"]
    assert "transformer.h.0.attn.c_attn" in qconfig["ignore"] and "lm_head" in qconfig["ignore"]
    tensors = safetensors.load_file(str(out / "model.safetensors"))
    assert torch.equal(
        tensors["transformer.h.0.attn.c_attn.weight"], model.transformer.h[0].attn.c_attn.weight
    )
    assert not any(k.endswith("weight_scale") for k in tensors)


def test_hf_fp16_export_is_a_plain_float16_checkpoint(tmp_path: Path) -> None:
    model, out = _export(tmp_path, "llama", "hf", "--dtype", "fp16")
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float16"
    tensors = safetensors.load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    assert torch.equal(tensors["lm_head.weight"], model.lm_head.weight.half())


def test_hf_int8_export_loads_as_quantcore(tmp_path: Path) -> None:
    model, out = _export(tmp_path, "llama", "hf", "--exclude", "lm_head")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    expected = quantcore.quantize(model, "int8", exclude=["lm_head"], output="module")
    assert torch.equal(run(loaded), run(expected))
