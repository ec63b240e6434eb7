"""quantize -> save -> load into a meta skeleton -> same outputs; sharded checkpoints; format
versions."""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import torch
from torch import nn

import quantcore
from quantcore.demo import DemoEncoder, build_demo_model

SUFFIXES = [".pt", ".safetensors"]


def _need(suffix: str) -> None:
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")


def _meta_skeleton() -> nn.Module:
    with torch.device("meta"):
        return DemoEncoder()


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_round_trip_into_meta_skeleton(tmp_path: Path, dtype: str, suffix: str) -> None:
    _need(suffix)
    model, tokens = build_demo_model()
    result = quantcore.quantize(model, dtype)
    path = quantcore.save(result, tmp_path / f"q{suffix}")
    skeleton = _meta_skeleton()
    loaded = quantcore.load(path, skeleton)
    assert all(p.is_meta for p in skeleton.parameters())  # the skeleton is not touched
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    assert result.module is not None
    with torch.inference_mode():
        assert torch.equal(loaded(tokens), result.module(tokens))
    reloaded = loaded.state_dict()
    for key, tensor in result.state_dict.items():
        assert reloaded[key].dtype == tensor.dtype and torch.equal(reloaded[key], tensor), key
    # the loaded model can be saved again
    again = quantcore.save(loaded, tmp_path / f"again{suffix}")
    assert quantcore.read_quantized(again).manifest.layers == result.manifest.layers  # type: ignore[union-attr]


def test_torch_file_is_plain(tmp_path: Path) -> None:
    result = quantcore.quantize(build_demo_model()[0])
    path = quantcore.save(result, tmp_path / "q.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "quantcore"
    assert raw["state_dict"]["head.weight"].dtype == torch.int8
    meta = json.loads(raw["metadata"]["quantcore"])
    head = next(layer for layer in meta["layers"] if layer["name"] == "head")
    assert head["layer_kind"] == "linear" and head["scheme"] == "int8"
    assert head["spec"]["weight"]["granularity"] == "per_channel"
    assert meta["format_version"] == quantcore.FORMAT_VERSION and meta["quantcore_version"]


def test_integer_tensors_stored_flat_are_viewed_back(tmp_path: Path) -> None:
    """Hugging Face folders store int8 codes 1-D (a float model refuses them); load gives them
    back the shapes their layers have."""
    model, tokens = build_demo_model()
    result = quantcore.quantize(model, "int8")
    path = quantcore.save(result, tmp_path / "q.pt")
    raw = torch.load(path, weights_only=True)
    raw["state_dict"] = {
        k: v.reshape(-1) if v.dtype == torch.int8 else v for k, v in raw["state_dict"].items()
    }
    assert raw["state_dict"]["head.weight"].dim() == 1
    torch.save(raw, path)
    loaded = quantcore.load(path, _meta_skeleton())
    assert result.module is not None
    with torch.inference_mode():
        assert torch.equal(loaded(tokens), result.module(tokens))


def test_a_plain_state_dict_does_not_load_into_a_float_model(tmp_path: Path) -> None:
    """torch.save(quantized.state_dict()) loaded into the float model: torch's strict default
    refuses the quantization parameters (weight_scale) it has no place for; an FP16 state dict
    holds float16 weights only and loads as those values."""
    model = build_demo_model()[0]
    torch.save(quantcore.quantize(model, "int8", output="module").state_dict(), tmp_path / "q.pt")
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*head\.weight_scale"):
        build_demo_model()[0].load_state_dict(torch.load(tmp_path / "q.pt"))
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    fp16 = quantcore.quantize(mlp, "fp16", output="module")
    float_model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    float_model.load_state_dict(fp16.state_dict())
    assert float_model[0].weight.dtype == torch.float32
    assert torch.equal(float_model[0].weight, fp16.state_dict()["0.weight"].float())


def test_state_dict_path_file_loads_into_skeleton(tmp_path: Path) -> None:
    model, tokens = build_demo_model()
    torch.save({"model": model.state_dict()}, tmp_path / "ckpt.pt")
    _, written = quantcore.quantize_to_file(tmp_path / "ckpt.pt", tmp_path / "q.pt")
    loaded = quantcore.load(written[0], _meta_skeleton())
    fresh = quantcore.quantize(model, output="module")
    with torch.inference_mode():
        assert torch.equal(loaded(tokens), fresh(tokens))


def test_newer_format_is_refused(tmp_path: Path) -> None:
    result = quantcore.quantize(nn.Sequential(nn.Linear(4, 4)))
    path = quantcore.save(result, tmp_path / "q.pt")
    raw = torch.load(path, weights_only=True)
    meta = json.loads(raw["metadata"]["quantcore"])
    meta["format_version"] = quantcore.FORMAT_VERSION + 1
    meta["quantcore_version"] = "99.0"
    raw["metadata"]["quantcore"] = json.dumps(meta)
    torch.save(raw, path)
    with pytest.raises(quantcore.IncompatibleFormatError, match=r"quantcore 99\.0.*Upgrade"):
        quantcore.load(path, nn.Sequential(nn.Linear(4, 4)))


def test_wrong_skeleton_is_explained(tmp_path: Path) -> None:
    path = quantcore.save(quantcore.quantize(nn.Sequential(nn.Linear(4, 8))), tmp_path / "q.pt")
    with pytest.raises(quantcore.SerializationError, match=r"shape \(8, 4\)"):
        quantcore.load(path, nn.Sequential(nn.Linear(4, 6)))
    with pytest.raises(quantcore.SerializationError, match="ReLU in the skeleton"):
        quantcore.load(path, nn.Sequential(nn.ReLU()))
    with pytest.raises(quantcore.SerializationError, match="does not have"):
        quantcore.load(path, nn.Sequential())


# -- sharded checkpoints -------------------------------------------------------------------------
def _write_sharded(folder: Path, state: Mapping[str, torch.Tensor], suffix: str, n: int) -> Path:
    keys = list(state)
    weight_map: dict[str, str] = {}
    for i in range(n):
        part = keys[i * len(keys) // n : (i + 1) * len(keys) // n]
        name = f"model-{i + 1:05d}-of-{n:05d}{suffix}"
        tensors = {k: state[k].clone() for k in part}
        if suffix == ".safetensors":
            import safetensors.torch

            safetensors.torch.save_file(tensors, str(folder / name))
        else:
            torch.save(tensors, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    index = folder / f"model{suffix}.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_sharded_checkpoint(tmp_path: Path, suffix: str) -> None:
    _need(suffix)
    model, tokens = build_demo_model()
    src = tmp_path / "src"
    src.mkdir()
    # 7 shards cut the attention blocks (in_proj in one file, out_proj in the next)
    index = _write_sharded(src, model.state_dict(), suffix, 7)
    fresh = quantcore.quantize(model)
    in_memory = quantcore.quantize(index)
    assert set(in_memory.state_dict) == set(fresh.state_dict)
    for key, tensor in fresh.state_dict.items():
        assert torch.equal(in_memory.state_dict[key], tensor), key
    assert any("sharded" in note for note in in_memory.report.notes)

    report, written = quantcore.quantize_to_file(index, tmp_path / "out" / f"q{suffix}")
    out_index = written[0]
    assert out_index.name == f"q{suffix}.index.json" and len(written) > 2
    assert len(report.quantized) == 8
    loaded = quantcore.load(out_index, _meta_skeleton())
    assert fresh.module is not None
    with torch.inference_mode():
        assert torch.equal(loaded(tokens), fresh.module(tokens))


def test_index_paths_must_stay_in_the_folder(tmp_path: Path) -> None:
    outside = tmp_path / "secret.pt"
    torch.save({"w": torch.ones(1)}, outside)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    index = folder / "model.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "../secret.pt"}}))
    with pytest.raises(quantcore.UnsafeCheckpointError, match="outside the checkpoint's folder"):
        quantcore.quantize(index)


def test_shards_are_held_one_at_a_time(tmp_path: Path) -> None:
    """Memory stays bounded by the largest shard: a shard's tensors are freed before the next."""
    live: set[int] = set()
    peak = 0

    def make_shard(i: int) -> quantcore.plugin.StateDictShard:
        def load() -> dict[str, torch.Tensor]:
            nonlocal peak
            tensors = {f"layer{i}.weight": torch.randn(16, 8), f"layer{i}.bias": torch.randn(16)}
            for t in tensors.values():
                live.add(id(t))
                weakref.finalize(t, live.discard, id(t))
            peak = max(peak, len(live))
            return tensors

        return quantcore.plugin.StateDictShard(f"shard{i}", load)

    class Shards:
        pass

    class Adapter:
        @quantcore.plugin.hookimpl
        def quantcore_input_adapters(self) -> Iterator[quantcore.plugin.InputAdapter]:
            yield quantcore.plugin.InputAdapter(
                name="test-shards",
                accepts=lambda obj: isinstance(obj, Shards),
                adapt=lambda obj: quantcore.plugin.AdaptedInput(
                    shards=tuple(make_shard(i) for i in range(4)), description="four shards"
                ),
                priority=1000,
            )

    manager = quantcore.create_plugin_manager()
    manager.register_plugin(Adapter(), "test-shards")
    report, written = quantcore.quantize_to_file(
        Shards(), tmp_path / "q.pt", plugin_manager=manager
    )
    assert len(report.quantized) == 4 and len(written) == 5
    assert peak == 2  # never more than one shard's two tensors alive
    state = quantcore.read_quantized(written[0]).state_dict
    assert state["layer3.weight"].dtype == torch.int8
