"""Reading any checkpoint safely: ``.pt`` / ``.pth`` / ``.bin`` pickles with
``torch.load(weights_only=True)`` (a pickle that needs code is refused, never run),
``.safetensors`` files, and shard indexes (whose shard names may not leave their folder)."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from quantcore.errors import CheckpointError, MissingDependencyError, UnsafeCheckpointError

PathLike = str | os.PathLike[str]
SAFETENSORS_SUFFIX = ".safetensors"


# -- reading any checkpoint safely ---------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointFile:
    """What one file holds: ``content`` is whatever ``torch.load(weights_only=True)`` returns
    (a dict of tensors for safetensors); ``metadata`` is the safetensors header ({} for torch)."""

    path: Path
    content: object
    metadata: Mapping[str, str] = field(default_factory=dict)


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise MissingDependencyError(
            "reading and writing .safetensors files", "safetensors", "safetensors"
        ) from None
    return safetensors


def read_checkpoint(path: PathLike, *, mmap: bool = True) -> CheckpointFile:
    """Read a ``.pt`` / ``.pth`` / ``.bin`` (pickle, with ``weights_only=True``) or ``.safetensors``
    file. A pickle that needs arbitrary code is refused, never executed."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file" + (" (it is a folder)" if p.is_dir() else ""))
    if p.suffix == SAFETENSORS_SUFFIX:
        st = _safetensors()
        try:
            with st.safe_open(str(p), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        except Exception as exc:
            raise CheckpointError(f"{p}: not a readable safetensors file ({exc})") from exc
        return CheckpointFile(p, tensors, metadata)
    try:
        content = _torch_load(p, mmap=mmap)
    except pickle.UnpicklingError as exc:
        not_pickle = _not_a_pickle(p)
        if not_pickle:  # torch calls every unreadable file an unsafe pickle
            raise CheckpointError(f"{p}: not a PyTorch checkpoint: {not_pickle}") from None
        raise UnsafeCheckpointError(
            f"{p}: refused to load: the pickle needs Python code that could do anything when "
            f"unpickled, and quantcore loads only plain tensors and containers "
            f"(torch.load(weights_only=True)). Nothing in it was run. Detail: "
            f"{_first_line(exc)}. If you trust the file, load it yourself "
            "(torch.load(path, weights_only=False)) and pass the model or its state_dict() to "
            "quantcore; better, re-save it as a state dict or a .safetensors file."
        ) from None
    except Exception as exc:
        raise CheckpointError(
            f"{p}: cannot read it as a PyTorch checkpoint ({type(exc).__name__}: "
            f"{_first_line(exc)})"
        ) from None
    return CheckpointFile(p, content)


def _not_a_pickle(path: Path) -> str:
    """Why ``path`` is no torch.save file (a zip or a pickle), or "" when it is one."""
    try:
        with path.open("rb") as handle:
            head = handle.read(10)
    except OSError:
        return ""
    if head.startswith((b"PK\x03\x04", b"\x80")):
        return ""
    if len(head) == 10 and head[8:10] == b'{"':
        return "it is a safetensors file: give it the .safetensors suffix"
    return (
        "neither a torch.save zip nor a pickle; quantcore reads .pt/.pth/.bin/.ckpt files "
        "written by torch.save and .safetensors files"
    )


def _torch_load(path: Path, *, mmap: bool) -> object:
    if mmap:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError:
            raise
        except RuntimeError as exc:
            if "mmap" not in str(exc) and "zipfile" not in str(exc):
                raise
            # legacy (pre-zipfile) checkpoints cannot be memory-mapped
    return torch.load(path, map_location="cpu", weights_only=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        if line.strip():
            # torch's message starts with a generic sentence; the GLOBAL line says what was asked
            if "GLOBAL" in text and "GLOBAL" not in line:
                continue
            return line.strip()
    return text or type(exc).__name__


def shard_paths(index_path: PathLike, filenames: Iterable[str]) -> dict[str, Path]:
    """Resolve the shard names an index lists; a name that escapes the index's folder is refused."""
    index = Path(index_path)
    folder = index.parent.resolve()
    resolved: dict[str, Path] = {}
    for name in filenames:
        try:
            candidate = (folder / name).resolve()
        except (OSError, ValueError) as exc:  # a NUL byte, a name too long, a symlink loop
            raise CheckpointError(
                f"{index}: the index names shard {name[:200]!r}, which is not a usable file name "
                f"({exc})"
            ) from None
        if Path(name).is_absolute() or not candidate.is_relative_to(folder):
            raise UnsafeCheckpointError(
                f"{index}: the index names shard {name!r}, which is outside the checkpoint's "
                f"folder {folder}; refused. Shard names must be files next to the index."
            )
        resolved[name] = candidate
    missing = [name for name, p in resolved.items() if not _is_file(p)]
    if missing:
        raise CheckpointError(
            f"{index}: shard file(s) listed in the index are missing: {', '.join(sorted(missing))}"
        )
    return resolved


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def read_index(path: PathLike) -> dict[str, Any]:
    """Read a shard index (``{"weight_map": {tensor: shard file}, "metadata": {...}}``)."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{p}: no such file") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{p}: not a readable JSON shard index ({exc})") from exc
    weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(
            f"{p}: a shard index needs a 'weight_map' object mapping tensor names to shard files"
        )
    return dict(raw)
