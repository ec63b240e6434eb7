"""Security: loading never unpickles arbitrary objects, configuration cannot make quantcore import
arbitrary modules (only installed plugins are used), and paths in shard indexes cannot escape the
checkpoint's folder. tests/io/test_io_inputs.py::test_malicious_pickle_is_refused_without_running
covers the basic malicious pickle; here are its fuzzed variants."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given
from torch import nn

import quantcore
from reliability.helpers import Tally, fast_settings

MARKER_MODULE = "quantcore_evil_marker"


@pytest.fixture
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A module on sys.path whose import (or any call into it) creates a file: proof of execution."""
    flag = tmp_path / "IMPORTED"
    site = tmp_path / "site"
    site.mkdir()
    (site / f"{MARKER_MODULE}.py").write_text(
        f"open({str(flag)!r}, 'w').write('imported')\n"
        "def run(*a, **k):\n"
        f"    open({str(flag)!r}, 'w').write('called')\n"
    )
    monkeypatch.syspath_prepend(str(site))
    yield flag
    sys.modules.pop(MARKER_MODULE, None)
    assert not flag.exists(), "the marker module was imported or called"
    assert MARKER_MODULE not in sys.modules


# -- pickles -------------------------------------------------------------------------------------
def _global(module: str, name: str, protocol: int) -> bytes:
    if protocol >= 4:
        return (
            pickle.SHORT_BINUNICODE
            + bytes([len(module)])
            + module.encode()
            + pickle.SHORT_BINUNICODE
            + bytes([len(name)])
            + name.encode()
            + pickle.STACK_GLOBAL
        )
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def evil_pickle(target: tuple[str, str], arg: str, opcode: str, protocol: int) -> bytes:
    """A pickle whose loading calls ``module.name(arg)`` through REDUCE, NEWOBJ, BUILD or INST."""
    module, name = target
    proto = pickle.PROTO + bytes([protocol]) if protocol >= 2 else b""
    text = pickle.BINUNICODE + len(arg).to_bytes(4, "little") + arg.encode()
    if opcode == "inst":
        return pickle.MARK + text + pickle.INST + f"{module}\n{name}\n".encode() + pickle.STOP
    call = _global(module, name, protocol)
    if opcode == "reduce":
        body = call + pickle.MARK + text + pickle.TUPLE + pickle.REDUCE
    elif opcode == "newobj":
        body = call + pickle.MARK + text + pickle.TUPLE + pickle.NEWOBJ
    else:  # build: an object whose __setstate__ is the target
        body = call + pickle.EMPTY_TUPLE + pickle.NEWOBJ + text + pickle.BUILD
    wrapped = pickle.EMPTY_DICT + pickle.SHORT_BINUNICODE + b"\x06weight" + body + pickle.SETITEM
    return proto + wrapped + pickle.STOP


TARGETS = [
    (MARKER_MODULE, "run"),
    ("os", "system"),
    ("builtins", "eval"),
    ("builtins", "exec"),
    ("subprocess", "Popen"),
    ("builtins", "open"),
    ("torch", "load"),
    ("torch.serialization", "load"),
    ("importlib", "import_module"),
]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@fast_settings(60)
@given(
    target=st.sampled_from(TARGETS),
    opcode=st.sampled_from(["reduce", "newobj", "build", "inst"]),
    protocol=st.integers(0, 5),
    container=st.sampled_from(["raw", "torch_zip"]),
    suffix=st.sampled_from([".pt", ".bin", ".pth", ".ckpt"]),
)
def test_fuzzed_malicious_pickles_are_refused_without_running(
    target: tuple[str, str],
    opcode: str,
    protocol: int,
    container: str,
    suffix: str,
    marker: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tally: Tally,
) -> None:
    tally.add("fuzz cases: malicious pickles")
    folder = tmp_path_factory.mktemp("evil")
    flag_arg = f"touch {marker}" if target == ("os", "system") else str(marker)
    payload = evil_pickle(target, flag_arg, opcode, protocol)
    path = folder / f"model{suffix}"
    if container == "raw":
        path.write_bytes(payload)
    else:  # the zip layout torch.save writes, with the payload as data.pkl
        torch.save({"w": torch.ones(1)}, path)
        with zipfile.ZipFile(path) as src:
            entries = {i.filename: src.read(i.filename) for i in src.infolist()}
        with zipfile.ZipFile(path, "w") as dst:
            for name, data in entries.items():
                dst.writestr(name, payload if name.endswith("data.pkl") else data)
    for action in (
        lambda: quantcore.quantize(path),
        lambda: quantcore.read_quantized(path),
        lambda: quantcore.load(path, nn.Linear(1, 1)),
    ):
        with pytest.raises(quantcore.CheckpointError):  # UnsafeCheckpointError, or unreadable
            action()
    assert not marker.exists()


# -- configuration names are looked up among loaded plugins, never imported -----------------------
@pytest.mark.parametrize(
    "config",
    [
        {"dtype": MARKER_MODULE},
        {"dtype": f"{MARKER_MODULE}:run"},
        {"overrides": [{"match": "*", "observer": MARKER_MODULE}]},
        {"overrides": [{"match": "*", "dtype": f"{MARKER_MODULE}.run"}]},
        {"disable_plugins": [MARKER_MODULE]},
        {"plugins": [MARKER_MODULE]},
        {"plugin": MARKER_MODULE},
    ],
)
def test_config_cannot_import_modules(
    config: dict[str, object], marker: Path, tmp_path: Path, tally: Tally
) -> None:
    tally.add("security cases")
    lines = []
    for key, value in config.items():
        if key == "overrides":
            for table in value:  # type: ignore[attr-defined]
                lines.append("[[overrides]]")
                lines.extend(f"{k} = {json.dumps(v)}" for k, v in table.items())
        else:
            lines.insert(0, f"{key} = {json.dumps(value)}")
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    for given_config in (path, config):
        with contextlib.suppress(quantcore.QuantcoreError):
            quantcore.quantize(nn.Linear(2, 2), config=given_config)


def test_environment_cannot_import_modules(
    marker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(quantcore.DISABLE_ENV_VAR, MARKER_MODULE)
    (tmp_path / "c.toml").write_text(f'dtype = "{MARKER_MODULE}"\n')
    monkeypatch.setenv(quantcore.CONFIG_ENV_VAR, str(tmp_path / "c.toml"))
    with pytest.raises(quantcore.ConfigValueError, match="unknown scheme"):
        quantcore.quantize(nn.Linear(2, 2))


def test_file_metadata_cannot_import_modules(marker: Path, tmp_path: Path) -> None:
    """A saved file names mappers, schemes and dtypes: all are looked up, never imported."""
    path = tmp_path / "q.pt"
    quantcore.save(quantcore.quantize(nn.Sequential(nn.Linear(2, 2))), path)
    blob = torch.load(path, weights_only=True)
    for field, value in [
        ("mapper", f"{MARKER_MODULE}:run"),
        ("scheme", MARKER_MODULE),
        ("layer_kind", MARKER_MODULE),
    ]:
        meta = json.loads(blob["metadata"]["quantcore"])
        meta["layers"][0][field] = value
        blob["metadata"]["quantcore"] = json.dumps(meta)
        torch.save(blob, path)
        with pytest.raises(quantcore.QuantcoreError):
            quantcore.load(path, nn.Sequential(nn.Linear(2, 2)))


# -- shard indexes cannot reach outside their folder ------------------------------------------------
def _index(folder: Path, shard: str) -> Path:
    index = folder / "model.index.json"
    index.write_text(json.dumps({"weight_map": {"fc.weight": shard}}))
    return index


@pytest.mark.parametrize(
    "shard",
    [
        "../secret.pt",
        "../ckpt/../secret.pt",
        "sub/../../secret.pt",
        "{abs}",
        "link.pt",
        "linkdir/w.pt",
    ],
)
def test_shard_paths_cannot_escape(shard: str, tmp_path: Path, tally: Tally) -> None:
    tally.add("security cases")
    secret = tmp_path / "secret.pt"
    torch.save({"fc.weight": torch.ones(2, 2)}, secret)
    outside = tmp_path / "outside"
    outside.mkdir()
    torch.save({"fc.weight": torch.ones(2, 2)}, outside / "w.pt")
    folder = tmp_path / "ckpt"
    (folder / "sub").mkdir(parents=True)
    os.symlink(secret, folder / "link.pt")
    os.symlink(outside, folder / "linkdir")
    index = _index(folder, shard.format(abs=secret))
    with pytest.raises(quantcore.UnsafeCheckpointError, match="outside the checkpoint's folder"):
        quantcore.quantize(index)
    with pytest.raises(quantcore.UnsafeCheckpointError):
        quantcore.plugin.shard_paths(index, [shard.format(abs=secret)])


def test_quantized_index_cannot_escape_either(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    torch.save({"fc.weight": torch.ones(2, 2)}, tmp_path / "secret.pt")
    meta = {
        "quantcore": json.dumps(
            {"format": "quantcore", "format_version": 1, "scheme": "int8", "layers": []}
        )
    }
    (folder / "q.index.json").write_text(
        json.dumps({"metadata": meta, "weight_map": {"fc.weight": "../secret.pt"}})
    )
    with pytest.raises(quantcore.UnsafeCheckpointError):
        quantcore.read_quantized(folder / "q.index.json")
