"""Where `quantcore quantize` writes, and what it says about files it cannot read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import quantcore
from quantcore.cli import main

st = pytest.importorskip("safetensors.torch")


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _sharded(folder: Path) -> Path:
    folder.mkdir()
    state = _state()
    names = {"0.weight": "a.safetensors", "0.bias": "a.safetensors"}
    names.update({"2.weight": "b.safetensors", "2.bias": "b.safetensors"})
    for shard in ("a.safetensors", "b.safetensors"):
        st.save_file({k: v for k, v in state.items() if names[k] == shard}, str(folder / shard))
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": names}))
    return index


def test_output_folder_with_trailing_slash_is_that_folder(tmp_path: Path) -> None:
    _sharded(tmp_path / "ckpt")
    out = tmp_path / "out"
    assert main(["quantize", str(tmp_path / "ckpt"), "-o", f"{out}{os.sep}", "-q"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    assert not list(tmp_path.glob("out-*"))  # nothing next to the folder
    assert quantcore.read_quantized(out).manifest.layers


def test_existing_folder_and_single_file_inputs(tmp_path: Path) -> None:
    st.save_file(_state(), str(tmp_path / "in.safetensors"))
    (tmp_path / "out").mkdir()
    assert main(["quantize", str(tmp_path / "in.safetensors"), "-o", str(tmp_path / "out")]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["model.safetensors"]
    torch.save(_state(), tmp_path / "in.pt")
    assert main(["quantize", str(tmp_path / "in.pt"), "-o", str(tmp_path / "pt") + "/"]) == 0
    assert [p.name for p in (tmp_path / "pt").iterdir()] == ["model.pt"]


def test_missing_output_folder_is_created_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.save(_state(), tmp_path / "in.pt")
    target = tmp_path / "new" / "deeper" / "q.pt"
    assert main(["quantize", str(tmp_path / "in.pt"), "-o", str(target)]) == 0
    assert target.is_file()
    assert f"created folder {target.parent}" in caplog.text


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"plain text, not a checkpoint\n", "neither a torch.save zip nor a pickle"),
        (None, "it is a safetensors file"),
    ],
)
def test_a_file_that_is_no_pickle_is_not_called_unsafe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, says: str
) -> None:
    path = tmp_path / "model.bin"
    if content is None:
        st.save_file(_state(), str(path))
    else:
        path.write_bytes(content)
    assert main(["quantize", str(path), "-o", str(tmp_path / "q.pt")]) == 1
    err = capsys.readouterr().err
    assert says in err and "refused" not in err and "pickle needs Python code" not in err
