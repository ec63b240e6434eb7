"""from_pretrained(float folder, quantization_config=QuantcoreConfig(...)): quantized while read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hf_helpers import BUILDERS, run

import quantcore

transformers = pytest.importorskip("transformers")


def _config(**settings: object) -> object:
    from quantcore_transformers.hf_quantizer import QuantcoreConfig

    return QuantcoreConfig(**settings)  # type: ignore[arg-type]


def test_sharded_float_folder_quantizes_as_quantize_does(tmp_path: Path) -> None:
    model = BUILDERS["llama"]()
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 3
    expected = run(quantcore.quantize(model, "int8", output="module"))
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, quantization_config=_config(dtype="int8")
    )
    assert torch.equal(run(loaded), expected)
    assert all(type(m).__name__ != "Linear" for m in loaded.modules())
    # and it saves as a quantized folder that loads back to the same outputs
    loaded.save_pretrained(tmp_path / "q")
    qconfig = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert len(qconfig["manifest"]["layers"]) == 16  # 2 x 7 projections, lm_head, embed_tokens
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    assert torch.equal(run(again), expected)


def test_settings_apply_to_full_layer_names(tmp_path: Path) -> None:
    model = BUILDERS["llama"]()
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path,
        quantization_config=_config(
            dtype="int8",
            exclude=["lm_head", "*.mlp.*"],
            overrides=[{"match": "*.q_proj", "dtype": "fp16"}],
        ),
    )
    kinds = {name: type(m).__name__ for name, m in loaded.named_modules()}
    assert kinds["lm_head"] == "Linear"
    assert kinds["model.layers.0.mlp.up_proj"] == "Linear"
    assert kinds["model.layers.1.self_attn.k_proj"] == "QuantizedLinear"
    q_proj = loaded.get_submodule("model.layers.0.self_attn.q_proj")
    assert q_proj.state_dict()["weight"].dtype == torch.float16
    expected = quantcore.quantize(
        model,
        "int8",
        exclude=["lm_head", "*.mlp.*"],
        overrides=[{"match": "*.q_proj", "dtype": "fp16"}],
        output="module",
    )
    assert torch.equal(run(loaded), run(expected))


def test_tied_output_head_stays_float_and_tied(tmp_path: Path) -> None:
    model = BUILDERS["gpt2"]()
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, quantization_config=_config(dtype="int8")
    )
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert type(loaded.transformer.h[0].attn.c_attn).__name__ == "QuantizedLinear"
    expected = quantcore.quantize(
        model, "int8", exclude=["lm_head", "transformer.wte"], output="module"
    )
    assert torch.equal(run(loaded), run(expected))


_IMPORT_CONFIG_FIRST = """
import sys, warnings
warnings.simplefilter("error")  # a failed integration is a PluginLoadWarning
import quantcore, transformers
from quantcore_transformers.hf_quantizer import QuantcoreConfig  # loads transformers' quantizers
model = transformers.AutoModelForCausalLM.from_pretrained(
    sys.argv[1], quantization_config=QuantcoreConfig(dtype="int8")
)
print(type(model.lm_head).__name__)
"""


def test_importing_the_config_first_registers_quantcore(tmp_path: Path) -> None:
    """transformers' quantizers load in the middle of importing QuantcoreConfig's module; the
    integration hook must not fail on the half-imported module (it registers at its end)."""
    BUILDERS["llama"]().save_pretrained(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_CONFIG_FIRST, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "QuantizedLinear"


def _resident_mib(folder: Path) -> float:
    """Resident pages of this process's mappings of files in ``folder`` (Linux smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and not fields[0].endswith(":"):
            inside = len(fields) >= 6 and fields[-1].startswith(str(folder))
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_float_pages_of_quantized_layers_are_released(tmp_path: Path) -> None:
    """transformers reads the float checkpoint through memory maps: the pages of a layer stay
    resident while the file is mapped (the loaded model keeps the norms' float weights, views
    into it), unless quantcore lets them go once the layer is quantized (the whole file stays
    resident otherwise)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=16384,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    float_mib = (tmp_path / "model.safetensors").stat().st_size / 2**20
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, quantization_config=_config(dtype="int8")
    )
    assert type(loaded.lm_head).__name__ == "QuantizedLinear"
    assert float_mib > 30
    assert _resident_mib(tmp_path) < 0.25 * float_mib
