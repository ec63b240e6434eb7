"""Checkpoint files given as a path (str or ``pathlib.Path``): ``.pt`` / ``.pth`` / ``.bin``
(read with ``torch.load(weights_only=True)``, so a pickle that needs code is refused, never run),
``.safetensors`` (with the ``safetensors`` extra), a shard index (``*.index.json``), or a folder
holding one of these. A sharded checkpoint becomes one ``StateDictShard`` per shard file, so it is
quantized shard by shard."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from quantcore import plugin
from quantcore_adapters.state_dicts import (
    adapt_checkpoint_object,
    adapt_state_dict_object,
    is_checkpoint,
    is_state_dict,
)

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".index.json"
KNOWN_SUFFIXES = (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX, ".json")


def is_path(obj: object) -> bool:
    if isinstance(obj, os.PathLike):
        return True
    return isinstance(obj, str) and (obj.endswith(KNOWN_SUFFIXES) or _exists(Path(obj)))


def _exists(path: Path) -> bool:
    """Path.exists() that answers False for names no file system accepts (too long, NUL)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def explain_path(obj: object) -> str | None:
    if isinstance(obj, str):
        return f"no file or folder named {obj!r}, and no known checkpoint suffix"
    return None


def _already_quantized(path: Path) -> plugin.QuantcoreError:
    return plugin.CheckpointError(
        f"{path} was written by quantcore and is already quantized; load it with "
        "quantcore.load(path, skeleton) or look inside with `quantcore inspect`"
    )


def _resolve(path: Path) -> Path:
    """A folder stands for the one checkpoint (or shard index) inside it."""
    try:
        exists = path.exists()
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte
        raise plugin.CheckpointError(f"{str(path)[:200]!r}: not a usable path ({exc})") from None
    if not exists:
        raise plugin.CheckpointError(f"{path}: no such file or folder")
    if not path.is_dir():
        return path
    indexes = sorted(path.glob("*" + INDEX_SUFFIX))
    if len(indexes) == 1:
        return indexes[0]
    weights = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and p.suffix in (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX)
    )
    if len(indexes) == 0 and len(weights) == 1:
        return weights[0]
    found = [p.name for p in (*indexes, *weights)]
    raise plugin.CheckpointError(
        f"{path} is a folder holding {', '.join(found) if found else 'no checkpoint file'}; "
        "pass the file (or the *.index.json shard index) to quantize"
    )


def adapt_path(obj: object) -> plugin.AdaptedInput:
    assert isinstance(obj, (str, os.PathLike))
    path = _resolve(Path(obj))
    if path.name.endswith(".json"):
        return adapt_index(path)
    checkpoint = plugin.read_checkpoint(path)
    if _is_quantcore(checkpoint):
        raise _already_quantized(path)
    return adapt_loaded(checkpoint.content, path)


def _is_quantcore(checkpoint: plugin.CheckpointFile) -> bool:
    content = checkpoint.content
    return "quantcore" in checkpoint.metadata or (
        isinstance(content, Mapping) and content.get("format") == "quantcore"
    )


def adapt_loaded(content: object, path: Path) -> plugin.AdaptedInput:
    """What a file held, through the same recovery as an in-memory object."""
    source = f"file {path.name}"
    if is_state_dict(content):
        return adapt_state_dict_object(content, source)
    if is_checkpoint(content):
        return adapt_checkpoint_object(content, source)
    what = f"a {type(content).__name__}"
    if isinstance(content, Mapping):
        keys = ", ".join(repr(k) for k in list(content)[:8])
        what += f" with keys {keys}"
    raise plugin.CheckpointError(
        f"{path} holds {what}, not a state dict: quantcore needs a mapping of names to tensors, "
        "or a checkpoint dict with one under 'state_dict', 'model_state_dict' or 'model'"
    )


# -- sharded checkpoints -------------------------------------------------------------------------
def group_keys(keys: Sequence[str]) -> dict[str, str]:
    """key -> group: tensors of one module share a group, and so does everything under a module
    that holds tensors of its own (it may read its children's weights, as attention does)."""
    owners = {k.rpartition(".")[0] for k in keys if "." in k}
    if any("." not in k for k in keys):
        owners.add("")
    groups: dict[str, str] = {}
    for key in keys:
        module = key.rpartition(".")[0]
        if "" in owners:
            groups[key] = ""
            continue
        parts = module.split(".")
        groups[key] = next(
            (p for p in (".".join(parts[: i + 1]) for i in range(len(parts))) if p in owners),
            module,
        )
    return groups


def _load_tensors(path: Path, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    if path.suffix == SAFETENSORS_SUFFIX:
        checkpoint = plugin.read_checkpoint(path)  # raises the extra's hint if missing
    else:
        checkpoint = plugin.read_checkpoint(path, mmap=True)
    content = checkpoint.content
    if not is_state_dict(content):
        raise plugin.CheckpointError(f"shard {path} does not hold a state dict of tensors")
    assert isinstance(content, Mapping)
    missing = [k for k in keys if k not in content]
    if missing:
        raise plugin.CheckpointError(
            f"shard {path} lacks tensor(s) its index assigns to it: {', '.join(missing[:5])}"
        )
    return {k: content[k] for k in keys}


def adapt_index(path: Path) -> plugin.AdaptedInput:
    raw = plugin.read_index(path)
    meta = raw.get("metadata")
    if isinstance(meta, Mapping) and "quantcore" in meta:
        raise _already_quantized(path)
    weight_map: dict[str, str] = raw["weight_map"]
    files = plugin.shard_paths(path, sorted(set(weight_map.values())))  # in shard order
    keys = list(weight_map)
    groups = group_keys(keys)
    home: dict[str, str] = {}
    for key in keys:
        home.setdefault(groups[key], weight_map[key])
    assigned: dict[str, list[str]] = {name: [] for name in files}
    for key in keys:
        assigned[home[groups[key]]].append(key)
    moved = sum(1 for key in keys if home[groups[key]] != weight_map[key])

    def loader(keys_here: list[str]) -> plugin.StateDictShard:
        by_file: dict[str, list[str]] = {}
        for key in keys_here:
            by_file.setdefault(weight_map[key], []).append(key)
        shard_name = home[groups[keys_here[0]]]

        def load() -> Mapping[str, torch.Tensor]:
            tensors: dict[str, torch.Tensor] = {}
            for file_name, file_keys in by_file.items():
                tensors.update(_load_tensors(files[file_name], file_keys))
            return {k: tensors[k] for k in keys_here}

        return plugin.StateDictShard(shard_name, load, files[shard_name].stat().st_size)

    shards = tuple(loader(ks) for ks in assigned.values() if ks)
    notes = [f"sharded checkpoint: {len(shards)} shard(s), quantized one at a time"]
    if moved:
        notes.append(f"{moved} tensor(s) quantized with another shard to keep their layer whole")
    return plugin.AdaptedInput(
        shards=shards,
        description=f"sharded checkpoint {path.name} ({len(keys)} tensors in {len(files)} files)",
        notes=tuple(notes),
    )
