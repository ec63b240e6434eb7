"""The quantcore file format: reading and writing quantized models, loading them onto a float
skeleton, and quantizing straight to a file (sharded inputs shard by shard).

Format-agnostic: a quantized model is its plain state dict plus a :class:`Manifest` (per layer:
mapper, scheme, spec, quantized tensor shapes). ``torch.save`` files hold
``{"format": "quantcore", "metadata": {"quantcore": <json>}, "state_dict": {...}}`` and load with
``torch.load(weights_only=True)``; safetensors files hold the same JSON in their str -> str header.
Rebuilding the layers without float weights is :mod:`quantcore.rebuild`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantcore.assemble import assemble_module
from quantcore.checkpoints import (
    SAFETENSORS_SUFFIX,
    CheckpointFile,
    PathLike,
    _first_line,
    _safetensors,
    read_checkpoint,
    read_index,
    shard_paths,
)
from quantcore.config import ConfigInput
from quantcore.convert import Progress
from quantcore.errors import (
    CheckpointError,
    QuantcoreError,
    SerializationError,
)
from quantcore.fusion import fuse_activations as fuse
from quantcore.job import (
    QuantizationJob,
    QuantizationResult,
    Quantized,
    configured_job,
    needs_calibration,
    quantize_result,
)
from quantcore.manifest import (
    FORMAT_NAME,
    Manifest,
    attach_manifest,
    manifest_of,
)
from quantcore.plugin_manager import QuantcorePluginManager, create_plugin_manager
from quantcore.rebuild import adapt_skeleton, rebuild, refuse_meta_tensors
from quantcore.report import QuantizationReport
from quantcore.settings import Overrides, QuantizeSettings, Selectors

logger = logging.getLogger("quantcore")

METADATA_KEY = "quantcore"  # key of the manifest JSON in a file's str -> str metadata
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
INDEX_SUFFIX = ".index.json"


# -- the quantcore file format ---------------------------------------------------------------
@dataclass(frozen=True)
class QuantizedFile:
    """A quantcore file read back: its tensors and its manifest."""

    state_dict: dict[str, torch.Tensor]
    manifest: Manifest
    path: Path
    shards: tuple[Path, ...] = ()


def quantcore_manifest(checkpoint: CheckpointFile) -> Manifest | None:
    """The manifest a file carries if quantcore wrote it, else None."""
    content, metadata = checkpoint.content, checkpoint.metadata
    if isinstance(content, Mapping) and content.get("format") == FORMAT_NAME:
        meta = content.get("metadata")
        if isinstance(meta, Mapping) and isinstance(meta.get(METADATA_KEY), str):
            return Manifest.from_json(meta[METADATA_KEY], str(checkpoint.path))
        raise SerializationError(f"{checkpoint.path}: quantcore file without its metadata")
    if METADATA_KEY in metadata:
        return Manifest.from_json(metadata[METADATA_KEY], str(checkpoint.path))
    return None


def read_quantized(path: PathLike) -> QuantizedFile:
    """Read a file (or a shard index) written by :func:`save` / :func:`quantize_to_file`."""
    p = Path(path)
    if p.is_dir():  # the one index, or the one checkpoint file, inside
        inside = sorted(p.glob("*" + INDEX_SUFFIX)) or sorted(
            f for f in p.iterdir() if f.suffix in (SAFETENSORS_SUFFIX, *TORCH_SUFFIXES)
        )
        if len(inside) != 1:
            raise CheckpointError(
                f"{p} is a folder; give the quantized file or its {INDEX_SUFFIX} index"
            )
        p = inside[0]
    if p.name.endswith(INDEX_SUFFIX):
        raw = read_index(p)
        meta = raw.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get(METADATA_KEY), str):
            raise SerializationError(
                f"{p}: this shard index was not written by quantcore (no quantcore metadata); "
                "quantize the checkpoint first: quantcore quantize INDEX -o OUTPUT"
            )
        manifest = Manifest.from_json(meta[METADATA_KEY], str(p))
        paths = shard_paths(p, dict.fromkeys(raw["weight_map"].values()))
        state_dict: dict[str, torch.Tensor] = {}
        for shard in paths.values():
            state_dict.update(_plain_state_dict(read_checkpoint(shard)))
        return QuantizedFile(state_dict, manifest, p, tuple(paths.values()))
    checkpoint = read_checkpoint(p)
    found = quantcore_manifest(checkpoint)
    if found is None:
        raise SerializationError(
            f"{p}: not a quantcore file (it carries no quantcore metadata). Quantize it first "
            f"(quantcore quantize {p.name} -o OUTPUT), or pass a file written by quantcore.save()."
        )
    return QuantizedFile(_plain_state_dict(checkpoint), found, p)


def _plain_state_dict(checkpoint: CheckpointFile) -> dict[str, torch.Tensor]:
    content = checkpoint.content
    if isinstance(content, Mapping) and content.get("format") == FORMAT_NAME:
        content = content.get("state_dict")
    if not isinstance(content, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in content.items()
    ):
        raise SerializationError(f"{checkpoint.path}: the file holds no state dict of tensors")
    return dict(content)


def _write(path: Path, state_dict: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write one file; any failure to write is a SerializationError naming the path."""
    if not path.name or path.is_dir():
        raise SerializationError(f"{path}: is a folder; give a file name such as model.pt")
    try:
        if not path.parent.exists():
            path.parent.mkdir(parents=True)
            logger.warning("created folder %s for %s", path.parent, path.name)
        if path.suffix == SAFETENSORS_SUFFIX:
            st = _safetensors()
            st.torch.save_file(_unshared(state_dict), str(path), metadata=metadata)
        else:
            torch.save(
                {"format": FORMAT_NAME, "metadata": metadata, "state_dict": dict(state_dict)},
                path,
            )
    except QuantcoreError:
        raise
    except Exception as exc:  # OSError, or torch's RuntimeError for a file it cannot open
        raise SerializationError(
            f"{path}: cannot write the quantized model ({type(exc).__name__}: {_first_line(exc)}); "
            "check that the folder exists or can be created and is writable"
        ) from exc


def _refuse_index(path: Path) -> None:
    if path.name.endswith(INDEX_SUFFIX):
        raise SerializationError(
            f"{path}: an index file is written only for sharded input "
            "(quantcore.quantize_to_file); give a .pt or .safetensors path"
        )


def _unshared(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied weights): give each its own copy."""
    seen: set[tuple[str, int]] = set()
    out: dict[str, torch.Tensor] = {}
    for key, t in state_dict.items():
        t = t.detach()
        ptr = (str(t.device), t.untyped_storage().data_ptr())
        out[key] = t.contiguous() if ptr not in seen and t.numel() else t.clone().contiguous()
        seen.add(ptr)
    return out


def _metadata(manifest: Manifest) -> dict[str, str]:
    return {
        "format": FORMAT_NAME,
        "format_version": str(manifest.format_version),
        "quantcore_version": manifest.quantcore_version,
        METADATA_KEY: manifest.to_json(),
    }


def save(obj: QuantizationResult | nn.Module, path: PathLike) -> Path:
    """Write a quantized model to ``path``: ``.safetensors`` for safetensors, anything else
    (``.pt``) for ``torch.save``. ``obj`` is what :func:`quantcore.quantize` or :func:`load`
    returned (a result or the quantized module)."""
    if isinstance(obj, QuantizationResult):
        manifest, state_dict = obj.manifest, obj.state_dict
    elif isinstance(obj, nn.Module):
        manifest, state_dict = manifest_of(obj), obj.state_dict()
    else:
        raise SerializationError(
            f"quantcore.save() takes what quantcore.quantize() returned (a QuantizationResult or "
            f"the quantized module), not {type(obj).__name__}"
        )
    if manifest is None:
        raise SerializationError(
            "this module carries no quantcore metadata: pass the QuantizationResult (or the "
            "module) that quantcore.quantize() or quantcore.load() returned, not a module built "
            "otherwise"
        )
    p = Path(path)
    _refuse_index(p)
    _write(p, state_dict, _metadata(manifest))
    return p


# -- rebuilding from a float skeleton (quantcore.rebuild) ---------------------------------
def load(
    path: PathLike,
    skeleton: nn.Module,
    *,
    plugin_manager: QuantcorePluginManager | None = None,
    strict: bool = True,
    fuse_activations: bool = True,
) -> nn.Module:
    """Rebuild a working quantized model from a file written by :func:`save` (or a shard index
    written by :func:`quantize_to_file`) and a float model of the same architecture.

    The skeleton only gives the structure: it may be on the meta device (built under
    ``with torch.device("meta"):``); it is not modified. Every tensor comes from the file.
    ``strict=False`` ignores tensors the file has and the skeleton lacks (a legacy
    ``embeddings.position_ids``, say), and skeleton tensors the file lacks (they keep the
    skeleton's values), as torch's ``load_state_dict(strict=False)`` does; each is logged.
    ``fuse_activations`` does what quantize()'s setting of that name does (files do not record
    it: it is a way of running the layers, not part of their tensors).
    """
    qfile = read_quantized(path)
    manager = plugin_manager or create_plugin_manager()
    registry = manager.registry()
    built, quantized_ids, shared = rebuild(
        skeleton, qfile.manifest, registry, torch.device("cpu"), str(qfile.path)
    )
    modules = dict(skeleton.named_modules())
    replacements = {id(modules[name]): new for name, new in built.items()}
    # Tensors the file holds are replaced below, so the copy gets meta placeholders for them;
    # any other tensor (a non-persistent buffer) is copied from the skeleton.
    for name, t in skeleton.state_dict(keep_vars=True).items():
        if name in qfile.state_dict and id(t) not in shared.clones:
            placeholder = torch.empty_like(t, device="meta")
            if isinstance(t, nn.Parameter):
                placeholder = nn.Parameter(placeholder, requires_grad=t.requires_grad)
            shared.clones[id(t)] = placeholder
    model = assemble_module(skeleton, replacements, shared)
    _check_quantized_tensors(qfile, model, quantized_ids)
    _fill(model, qfile, type(skeleton).__name__, strict)
    model.eval()
    attach_manifest(model, qfile.manifest)
    adapted = adapt_skeleton(skeleton, registry)
    if adapted is not None and adapted.finalize is not None:
        adapted.finalize(model, qfile.manifest)  # may rebuild what a library knows how to
    refuse_meta_tensors(model, qfile.path)
    if fuse_activations:
        fuse(model)
    return model


def _fill(model: nn.Module, qfile: QuantizedFile, skeleton: str, strict: bool) -> None:
    state = qfile.state_dict
    if not strict:
        expected = model.state_dict(keep_vars=True)
        extra = sorted(set(state) - set(expected))
        if extra:
            logger.warning(
                "%s: ignored %d tensor(s) the skeleton %s does not have (strict=False): %s",
                qfile.path,
                len(extra),
                skeleton,
                ", ".join(extra[:10]) + (" ..." if len(extra) > 10 else ""),
            )
            state = {k: v for k, v in state.items() if k in expected}
        missing = sorted(set(expected) - set(state))
        if missing:
            logger.warning(
                "%s: %d tensor(s) of the skeleton are not in the file and keep the skeleton's "
                "values (strict=False): %s",
                qfile.path,
                len(missing),
                ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""),
            )
    try:
        model.load_state_dict(state, strict=strict, assign=True)
    except RuntimeError as exc:
        hint = "" if not strict else " (strict=False ignores tensors only one side has)"
        raise SerializationError(
            f"{qfile.path} does not fit the skeleton {skeleton}{hint}: {exc}"
        ) from exc


def _check_quantized_tensors(qfile: QuantizedFile, model: nn.Module, ids: set[int]) -> None:
    """A quantized weight in the file must have the dtype and shape its manifest records, and hold
    finite values (schemes never write NaN or Inf): a damaged or edited file is refused here
    instead of running with garbage weights. An integer tensor stored flat (as Hugging Face
    folders store them, so that a float model refuses them) is viewed to its shape first."""
    for key, expected in model.state_dict(keep_vars=True).items():
        if id(expected) not in ids or key not in qfile.state_dict:
            continue
        found = qfile.state_dict[key]
        if _stored_flat(found, expected):
            found = qfile.state_dict[key] = found.view(expected.shape)
        if found.dtype != expected.dtype or found.shape != expected.shape:
            raise SerializationError(
                f"{qfile.path}: tensor {key!r} is {found.dtype} {tuple(found.shape)}, but the "
                f"file's metadata records {expected.dtype} {tuple(expected.shape)}; the file is "
                "damaged or was edited. Quantize the model again."
            )
        if found.is_floating_point() and not bool(torch.isfinite(found).all()):
            raise SerializationError(
                f"{qfile.path}: tensor {key!r} holds NaN or Inf, which quantcore never writes; the "
                "file is damaged. Quantize the model again."
            )


def _stored_flat(found: torch.Tensor, expected: torch.Tensor) -> bool:
    return (
        found.dim() == 1
        and found.shape != expected.shape
        and found.numel() == expected.numel()
        and not found.is_floating_point()
    )


# -- quantizing straight to a file (streams sharded checkpoints) ---------------------------------
def sharded_names(path: Path, count: int) -> tuple[Path, list[Path]]:
    """Index and shard paths for ``path`` (``out/model.safetensors`` ->
    ``out/model.safetensors.index.json`` and ``out/model-00001-of-00003.safetensors``)."""
    base = Path(str(path)[: -len(INDEX_SUFFIX)]) if path.name.endswith(INDEX_SUFFIX) else path
    suffix = base.suffix or ".pt"
    index = base.with_name(base.stem + suffix + INDEX_SUFFIX)
    shards = [
        base.with_name(f"{base.stem}-{i:05d}-of-{count:05d}{suffix}") for i in range(1, count + 1)
    ]
    return index, shards


ShardProgress = Callable[[int, int, str], None]  # (shard index, shard count, shard name)


def quantize_to_file(
    obj: object,
    path: PathLike,
    dtype: str | torch.dtype | None = None,
    *,
    include: Selectors | None = None,
    exclude: Selectors | None = None,
    overrides: Overrides | None = None,
    config: ConfigInput = None,
    plugin_manager: QuantcorePluginManager | None = None,
    disable_plugins: Iterable[str] | None = None,
    strict: bool | None = None,
    log_level: str | None = None,
    progress: Progress | None = None,
    shard_progress: ShardProgress | None = None,
    calibration: object = None,
    max_error: float | None = None,
    error_metric: str | Callable[[Any, Any], float] | None = None,
    fallback: str | None = None,
    smooth: bool | None = None,
    smooth_alpha: float | None = None,
    fuse_activations: bool | None = None,
) -> tuple[QuantizationReport, tuple[Path, ...]]:
    """Quantize ``obj`` and write the result; returns the report and the files written.

    Takes the settings :func:`quantcore.quantize` takes (:class:`quantcore.QuantizeSettings`)
    and its ``calibration`` inputs, resolved the same way (parameters over configuration files
    over defaults). A sharded input is quantized shard by shard and written as a sharded output
    with its own index (see :func:`sharded_names`), so memory stays bounded by the largest shard.
    With calibration (a module input) the accuracy path runs as in quantize(), then the result
    is written.
    """
    settings = QuantizeSettings(
        dtype=dtype,
        include=include,
        exclude=exclude,
        overrides=overrides,
        disable_plugins=disable_plugins,
        strict=strict,
        log_level=log_level,
        max_error=max_error,
        error_metric=error_metric,
        fallback=fallback,
        smooth=smooth,
        smooth_alpha=smooth_alpha,
        fuse_activations=fuse_activations,
    )
    target = output_path(path, obj)
    effective = settings.resolve(config)
    if needs_calibration(effective, calibration):
        result = quantize_result(obj, effective, plugin_manager, progress, calibration)
        return result.report, (save(result, target),)
    with configured_job(obj, effective, plugin_manager) as job:
        target = output_path(path, obj, job.adapted.folder_suffix)
        return _write_job(job, target, progress, shard_progress)


def output_path(path: PathLike, source: object = None, suffix: str | None = None) -> Path:
    """Where :func:`quantize_to_file` writes for ``path``: a path that names a folder (a
    trailing slash, or an existing folder) means ``model<suffix>`` inside it; without a
    ``suffix`` (the input adapter's ``folder_suffix``) it follows the input (a safetensors
    checkpoint gives safetensors, anything else ``.pt``)."""
    text = os.fspath(path)
    target = Path(text)
    if not (text.endswith(("/", os.sep)) or target.is_dir()):
        return target
    if suffix is None:
        suffix = SAFETENSORS_SUFFIX if _is_safetensors(source) else ".pt"
    return target / ("model" + suffix)


def _is_safetensors(source: object) -> bool:
    if not isinstance(source, (str, os.PathLike)):
        return False
    p = Path(source)
    if p.is_dir():
        return any(p.glob("*" + SAFETENSORS_SUFFIX)) or any(p.glob("*.safetensors" + INDEX_SUFFIX))
    return p.name.endswith((SAFETENSORS_SUFFIX, SAFETENSORS_SUFFIX + INDEX_SUFFIX))


def _write_job(
    job: QuantizationJob,
    target: Path,
    progress: Progress | None,
    shard_progress: ShardProgress | None,
) -> tuple[QuantizationReport, tuple[Path, ...]]:
    if job.adapted.shards is None:
        result = job.run(progress)
        assert result.manifest is not None
        written = _write_stored(job, target, result.state_dict, result.manifest)
        return result.report, _with_companions(job, (written,), result.manifest)
    shards = job.adapted.shards
    index_path, shard_files = sharded_names(target, len(shards))
    weight_map: dict[str, str] = {}
    parts: list[Quantized] = []
    quantized = job.quantize_shards(progress, on_shard=shard_progress)
    for (_, part), out_file in zip(quantized, shard_files, strict=True):
        assert part.state_dict is not None
        _write_stored(job, out_file, part.state_dict, job.manifest(part.records))
        weight_map.update(dict.fromkeys(part.state_dict, out_file.name))
        parts.append(dataclasses.replace(part, state_dict=None))  # written: not kept
    if shard_progress is not None:
        shard_progress(len(shards), len(shards), "")
    result = job.finish(Quantized.merge(parts))
    assert result.manifest is not None
    index = {
        "metadata": {**_metadata(result.manifest), "total_size": result.report.size_after},
        "weight_map": weight_map,
    }
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True), encoding="utf-8")
    return result.report, _with_companions(job, (index_path, *shard_files), result.manifest)


def _write_stored(
    job: QuantizationJob, path: Path, state_dict: Mapping[str, torch.Tensor], manifest: Manifest
) -> Path:
    """Write as :func:`save` does, the tensors as the input's output format stores them."""
    _refuse_index(path)
    if job.adapted.stored_tensors is not None:
        state_dict = job.adapted.stored_tensors(state_dict, manifest)
    _write(path, state_dict, _metadata(manifest))
    return path


def _with_companions(
    job: QuantizationJob, written: tuple[Path, ...], manifest: Manifest
) -> tuple[Path, ...]:
    """The files written, plus those the input's adapter writes next to them."""
    if job.adapted.write_companions is None:
        return written
    return (*written, *job.adapted.write_companions(written, manifest))
