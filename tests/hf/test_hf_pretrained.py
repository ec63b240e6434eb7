"""save_pretrained / from_pretrained of quantcore models, through transformers' quantizer API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hf_helpers import BUILDERS, run, token_ids

import quantcore

transformers = pytest.importorskip("transformers")
safetensors = pytest.importorskip("safetensors.torch")


def _save_quantized(name: str, scheme: str, folder: Path, **kwargs: object) -> torch.Tensor:
    quantized = quantcore.quantize(BUILDERS[name](), scheme, output="module", **kwargs)
    quantized.save_pretrained(folder)
    return run(quantized)


def test_save_pretrained_writes_quantization_config_and_quantized_tensors(tmp_path: Path) -> None:
    model = BUILDERS["llama"]()
    _save_quantized("llama", "int8", tmp_path)
    qconfig = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qconfig["quant_method"] == "quantcore"
    assert qconfig["dtype"] == "int8"
    layers = {layer["name"]: layer for layer in qconfig["manifest"]["layers"]}
    assert layers["model.layers.0.self_attn.q_proj"]["mapper"] == "linear"
    tensors = safetensors.load_file(str(tmp_path / "model.safetensors"))
    # int8 codes are stored flat: a float model refuses them (test_hf_without_quantcore)
    assert tensors["model.layers.0.self_attn.q_proj.weight"].dtype == torch.int8
    assert tensors["model.layers.0.self_attn.q_proj.weight"].shape == (32 * 32,)
    assert tensors["model.layers.0.self_attn.q_proj.weight_scale"].shape == (32,)
    # the caller's float model is untouched: no quantization_config on its config
    assert getattr(model.config, "quantization_config", None) is None


_FRESH_PROCESS = """
import sys, torch
folder = sys.argv[1]
if sys.argv[2] == "quantcore-first":
    import quantcore
    import transformers
else:
    import transformers
    import quantcore
model = transformers.AutoModelForCausalLM.from_pretrained(folder)
ids, expected = torch.load(folder + "/ids.pt"), torch.load(folder + "/expected.pt")
with torch.no_grad():
    out = model(input_ids=ids)[0]
kinds = sorted({type(m).__name__ for m in model.modules() if hasattr(m, "kernel_name")})
print(torch.equal(out, expected), kinds)
"""


@pytest.mark.parametrize("order", ["quantcore-first", "transformers-first"])
def test_from_pretrained_in_a_fresh_process_is_bit_identical(tmp_path: Path, order: str) -> None:
    expected = _save_quantized("llama", "int8", tmp_path)
    torch.save(token_ids(), tmp_path / "ids.pt")
    torch.save(expected, tmp_path / "expected.pt")
    out = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, str(tmp_path), order],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "True ['QuantizedEmbedding', 'QuantizedLinear']"


@pytest.mark.parametrize(
    ("name", "scheme"), [("gpt2", "int8"), ("bert", "int8"), ("llama", "fp16"), ("gpt2", "fp16")]
)
def test_from_pretrained_gives_the_quantized_outputs(
    tmp_path: Path, name: str, scheme: str
) -> None:
    expected = _save_quantized(name, scheme, tmp_path)
    auto = transformers.AutoModel if name == "bert" else transformers.AutoModelForCausalLM
    loaded = auto.from_pretrained(tmp_path)
    assert torch.equal(run(loaded), expected)
    weight_dtype = torch.int8 if scheme == "int8" else torch.float16
    first = next(m for m in loaded.modules() if type(m).__name__ == "QuantizedLinear")
    assert first.state_dict()["weight"].dtype == weight_dtype
    assert first.kernel_name and "reference" not in first.kernel_name  # kernels picked again


def test_rebuilt_layers_hold_no_float_weights_before_loading() -> None:
    """from_pretrained builds quantized layers on meta; transformers then fills them: no float
    copy of a quantized weight exists at any point."""
    model = BUILDERS["llama"]()
    manifest = quantcore.quantize(model, "int8").manifest
    assert manifest is not None
    with torch.device("meta"):
        skeleton = type(model)(model.config)
    built = quantcore.plugin.rebuild_layers(skeleton, manifest, device="meta")
    assert set(built) == {layer.name for layer in manifest.layers}
    q_proj = built["model.layers.0.self_attn.q_proj"]
    assert all(t.is_meta for t in q_proj.state_dict().values())
    assert q_proj.state_dict()["weight"].dtype == torch.int8


def test_a_loaded_model_saves_again(tmp_path: Path) -> None:
    expected = _save_quantized("gpt2", "int8", tmp_path / "a")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    loaded.save_pretrained(tmp_path / "b")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    assert torch.equal(run(again), expected)
    assert quantcore.manifest_of(again) is not None  # quantcore.save works on it too


@pytest.mark.parametrize(
    ("name", "scheme"), [("llama", "int8"), ("gpt2", "int8"), ("llama", "fp16")]
)
@pytest.mark.parametrize("device_map", ["cpu", "auto"])
def test_from_pretrained_with_a_device_map(
    tmp_path: Path, name: str, scheme: str, device_map: str
) -> None:
    """device_map goes through accelerate's placement of the quantized modules (CPU here)."""
    pytest.importorskip("accelerate")
    expected = _save_quantized(name, scheme, tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, device_map=device_map)
    assert torch.equal(run(loaded), expected)
    assert any(type(m).__name__ == "QuantizedLinear" for m in loaded.modules())
