"""Hugging Face model folders given as a path (``quantcore quantize llama/ -o llama-int8/``).

The folder's checkpoint is read exactly as the built-in ``file`` adapter reads it (shard by
shard); written into a folder under transformers' names (``model.safetensors``, or
``model.safetensors.index.json`` and its shards), the output gets the folder's ``config.json``
with a ``quantization_config`` and the other small files (tokenizer, generation config), so
``from_pretrained`` loads it. Nothing here imports transformers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import quantcore
from quantcore import plugin
from quantcore_transformers.hf_models import QUANT_METHOD, manifest_to_dict, stored_flat

logger = logging.getLogger("quantcore")

CONFIG = "config.json"
_LOADABLE = ("model.safetensors", "model.safetensors.index.json")
_COMPANION_SUFFIXES = (".json", ".txt", ".model", ".jinja")


def accepts(obj: object) -> bool:
    if not isinstance(obj, (str, os.PathLike)):
        return False
    try:
        folder = Path(obj)
        return folder.is_dir() and (folder / CONFIG).is_file()
    except (OSError, ValueError):
        return False


def adapt(obj: object) -> plugin.AdaptedInput:
    assert isinstance(obj, (str, os.PathLike))
    # the checkpoint inside is read by the other adapters, as if the folder were given to them
    registry = quantcore.create_plugin_manager(disable=["transformers"]).registry()
    inner = plugin.adapt_input(obj, registry)
    return dataclasses.replace(
        inner,
        description=f"Hugging Face folder {Path(obj).name}: {inner.description}",
        write_companions=partial(write_companions, Path(obj)),
        folder_suffix=".safetensors",  # what from_pretrained reads, whatever the input was
        stored_tensors=stored_flat,
    )


def quantization_config(manifest: quantcore.Manifest) -> dict[str, object]:
    """What ``QuantcoreConfig.from_manifest(manifest).to_dict()`` gives, without transformers."""
    return {
        "quant_method": QUANT_METHOD,
        "dtype": manifest.scheme,
        "include": None,
        "exclude": None,
        "overrides": None,
        "manifest": manifest_to_dict(manifest),
        "quantcore_version": quantcore.__version__,
    }


def write_companions(
    source: Path, written: Sequence[Path], manifest: quantcore.Manifest
) -> list[Path]:
    names = {p.name for p in written}
    if not names & set(_LOADABLE):
        logger.info(
            "the output is not a Hugging Face folder (write it into a folder, -o OUT/, for "
            "from_pretrained to load it); config.json not copied"
        )
        return []
    folder = written[0].parent
    config = json.loads((source / CONFIG).read_text(encoding="utf-8"))
    config["quantization_config"] = quantization_config(manifest)
    target = folder / CONFIG
    target.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    copied = [target]
    for path in sorted(source.iterdir()):
        if (
            path.is_file()
            and path.suffix in _COMPANION_SUFFIXES
            and not path.name.endswith(".index.json")
            and path.name != CONFIG
            and not (folder / path.name).exists()
        ):
            copied.append(Path(shutil.copy(path, folder / path.name)))
    return copied
