"""Input adapters: modules (wrapped too), state dicts bit for bit, checkpoint recovery, files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from baselines import check_error
from oracles import relative_error
from torch import nn

import quantcore
from quantcore.demo import build_demo_model


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_state_dict_gives_exactly_the_module_tensors(
    dtype: str, plugin_manager: quantcore.QuantcorePluginManager
) -> None:
    model, _ = build_demo_model()
    from_module = quantcore.quantize(model, dtype, plugin_manager=plugin_manager)
    from_state = quantcore.quantize(model.state_dict(), dtype, plugin_manager=plugin_manager)
    _assert_same_tensors(from_module.state_dict, from_state.state_dict)
    # embedding, two attentions (out_proj included), four block linears, head; "custom" stays float
    assert len(from_module.report.quantized) == len(from_state.report.quantized) == 8
    quantized_dtype = torch.int8 if dtype == "int8" else torch.float16
    assert from_state.state_dict["embed.weight"].dtype == quantized_dtype
    assert from_state.state_dict["blocks.0.attn.out_proj.weight"].dtype == quantized_dtype


def test_data_parallel_is_unwrapped_and_reported() -> None:
    model = nn.Sequential(nn.Linear(8, 4))
    result = quantcore.quantize(nn.DataParallel(model))
    assert result.module is not None and not isinstance(result.module, nn.DataParallel)
    assert any("DataParallel" in note for note in result.report.notes)
    assert "DataParallel" in str(result.report)
    assert len(result.report.quantized) == 1


def test_fx_graph_module() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    traced = torch.fx.symbolic_trace(model)
    result = quantcore.quantize(traced)
    assert result.module is not None and len(result.report.quantized) == 2
    x = torch.randn(3, 8)
    with torch.no_grad():
        check_error("int8", relative_error(result.module(x), model(x)))
    assert "GraphModule" in result.report.input_description


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "model_state_dict"])
def test_checkpoint_dict_and_module_prefix_are_recovered(wrapper: str) -> None:
    model, _ = build_demo_model()
    reference = quantcore.quantize(model).state_dict
    checkpoint = {
        "epoch": 7,
        "optimizer": {"lr": 0.1},
        wrapper: {f"module.{k}": v for k, v in model.state_dict().items()},
    }
    result = quantcore.quantize(checkpoint)
    _assert_same_tensors(reference, result.state_dict)
    notes = " ".join(result.report.notes)
    assert repr(wrapper) in notes and "'module.'" in notes and "epoch" in notes


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
@pytest.mark.parametrize("as_path", [True, False])
def test_torch_files_by_str_or_path(tmp_path: Path, suffix: str, as_path: bool) -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.LayerNorm(4))
    file = tmp_path / f"model{suffix}"
    torch.save({"state_dict": model.state_dict()}, file)
    result = quantcore.quantize(file if as_path else str(file))
    _assert_same_tensors(quantcore.quantize(model).state_dict, result.state_dict)
    assert file.name in result.report.input_description


def test_folder_with_one_checkpoint(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(8, 4))
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    assert len(quantcore.quantize(tmp_path).report.quantized) == 1


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))  # unpickling would create the marker file


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    file = tmp_path / "evil.pt"
    with open(file, "wb") as handle:
        pickle.dump({"weight": _Exploit(marker)}, handle, protocol=2)
    torch.save(
        {"state_dict": {"fc.weight": torch.ones(2, 2)}, "x": _Exploit(marker)},
        tmp_path / "evil2.pt",
    )
    assert not marker.exists()
    for path in (file, tmp_path / "evil2.pt"):
        with pytest.raises(quantcore.UnsafeCheckpointError) as info:
            quantcore.quantize(path)
        message = str(info.value)
        assert "refused" in message and "Nothing in it was run" in message
        assert "weights_only=False" in message  # says how to proceed if the file is trusted
    assert not marker.exists()


def test_safetensors_needs_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"not read")
    monkeypatch.setitem(__import__("sys").modules, "safetensors", None)
    monkeypatch.setitem(__import__("sys").modules, "safetensors.torch", None)
    with pytest.raises(
        quantcore.MissingDependencyError, match=r"pip install 'quantcore\[safetensors\]'"
    ):
        quantcore.quantize(file)


def test_safetensors_input(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model, _ = build_demo_model()
    file = tmp_path / "model.safetensors"
    safetensors_torch.save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(file)
    )
    _assert_same_tensors(quantcore.quantize(model).state_dict, quantcore.quantize(file).state_dict)


def test_nothing_fits_says_what_was_tried_and_what_works() -> None:
    with pytest.raises(quantcore.UnsupportedInputError) as info:
        quantcore.quantize({"weight": torch.ones(2, 2), "epoch": 3})
    message = str(info.value)
    assert "a dict with 2 entries" in message
    assert "module, state_dict" in message and "checkpoint" in message and "file" in message
    assert "'epoch' is of type int" in message  # why the state-dict adapter declined
    assert "What works:" in message and "torch.nn.Module" in message and ".safetensors" in message
    tried = info.value.tried
    assert tried.index("module") + 1 == tried.index("state_dict")

    with pytest.raises(quantcore.UnsupportedInputError, match="no file or folder named 'no-such'"):
        quantcore.quantize("no-such")


def test_missing_file_and_non_state_dict_file(tmp_path: Path) -> None:
    with pytest.raises(quantcore.CheckpointError, match="no such file"):
        quantcore.quantize(tmp_path / "missing.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(quantcore.CheckpointError, match="holds a list, not a state dict"):
        quantcore.quantize(tmp_path / "list.pt")


def test_quantcore_output_is_not_quantized_twice(tmp_path: Path) -> None:
    result = quantcore.quantize(nn.Sequential(nn.Linear(4, 4)), "fp16")
    path = quantcore.save(result, tmp_path / "q.pt")
    with pytest.raises(quantcore.CheckpointError, match="already quantized"):
        quantcore.quantize(path)
    assert os.path.exists(path)
