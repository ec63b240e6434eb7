"""A quantcore folder loaded where quantcore cannot be imported: transformers does not know the
method, so nothing of quantcore's runs. INT8 folders store their int8 codes flat, which a float
model refuses (a loud error, never int8 codes taken as float weights); FP16 folders load as the
float16 weights they hold. Each load runs in a fresh process with quantcore hidden."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hf_helpers import BUILDERS, run, token_ids

import quantcore
from quantcore.cli import main

transformers = pytest.importorskip("transformers")
safetensors = pytest.importorskip("safetensors.torch")

_HIDDEN = """
import importlib.abc, sys, torch


class Hidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "quantcore" or name.startswith(("quantcore.", "quantcore_")):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None


sys.meta_path.insert(0, Hidden())
folder = sys.argv[1]
if sys.argv[2] == "sentence-transformers":
    from sentence_transformers import SentenceTransformer

    out = SentenceTransformer(folder, device="cpu").encode(sys.argv[3:], convert_to_tensor=True)
else:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        out = model(input_ids=torch.load(folder + "/ids.pt"))[0]
assert not [m for m in sys.modules if m.startswith("quantcore")], "quantcore was imported"
torch.save(out, folder + "/out.pt")
print("loaded")
"""

_SENTENCES = ["A man is playing a guitar.", "The cat sleeps."]


def _load_without_quantcore(folder: Path, kind: str = "causal-lm") -> subprocess.CompletedProcess:
    args = [sys.executable, "-c", _HIDDEN, str(folder), kind, *_SENTENCES]
    return subprocess.run(args, capture_output=True, text=True)


def _assert_loud(out: subprocess.CompletedProcess) -> None:
    assert out.returncode != 0, "loaded without quantcore: " + out.stdout
    assert "Unknown quantization type, got quantcore" in out.stderr  # transformers' warning
    assert "size mismatch" in out.stderr or "ignore_mismatched_sizes" in out.stderr
    assert "quantcore was imported" not in out.stderr


def _save_pretrained(name: str, scheme: str, folder: Path) -> torch.Tensor:
    quantized = quantcore.quantize(BUILDERS[name](), scheme, output="module")
    quantized.save_pretrained(folder)
    torch.save(token_ids(), folder / "ids.pt")
    return run(quantized)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_int8_save_pretrained_folder_fails_loudly(tmp_path: Path, name: str) -> None:
    _save_pretrained(name, "int8", tmp_path)
    _assert_loud(_load_without_quantcore(tmp_path))


def test_int8_cli_folder_fails_loudly(tmp_path: Path) -> None:
    BUILDERS["llama"]().save_pretrained(tmp_path / "float", max_shard_size="20KB")
    out = tmp_path / "out"
    assert main(["quantize", str(tmp_path / "float"), "-o", f"{out}/", "-q"]) == 0
    torch.save(token_ids(), out / "ids.pt")
    _assert_loud(_load_without_quantcore(out))


def test_fp16_folder_loads_its_float16_weights(tmp_path: Path) -> None:
    """Nothing to refuse: the float16 weights are the quantized values, read as float32."""
    expected = _save_pretrained("llama", "fp16", tmp_path)
    out = _load_without_quantcore(tmp_path)
    assert out.returncode == 0, out.stderr
    loaded = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(loaded, expected, rtol=1e-4, atol=1e-4)


def test_int8_sentence_transformer_fails_loudly(tmp_path: Path) -> None:
    from test_sentence_transformers import _tiny_sentence_transformer

    model = _tiny_sentence_transformer(tmp_path / "float")
    quantcore.quantize(model, "int8", output="module").save(str(tmp_path / "q"))
    _assert_loud(_load_without_quantcore(tmp_path / "q", "sentence-transformers"))


def _main_layout(folder: Path, quantized: torch.nn.Module) -> None:
    """Rewrite a folder's tensors as quantcore 0.x's save_pretrained wrote them: every tensor in
    its module shape (int8 codes included), tied tensors as separate copies."""
    state = {k: v.clone().contiguous() for k, v in quantized.state_dict().items()}
    safetensors.save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_folders_with_unflattened_tensors_still_load(tmp_path: Path, name: str) -> None:
    quantized = quantcore.quantize(BUILDERS[name](), "int8", output="module")
    quantized.save_pretrained(tmp_path)
    _main_layout(tmp_path, quantized)
    stored = safetensors.load_file(str(tmp_path / "model.safetensors"))
    weight = next(k for k in stored if k.endswith("c_attn.weight") or k.endswith("q_proj.weight"))
    assert stored[weight].dim() == 2
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(run(loaded), run(quantized))
