"""``quantcore export``: Hugging Face folders that serving engines and transformers load as they are.

- ``compressed-tensors`` (INT8): the W8A8 int8 layout of the compressed-tensors format, which
  vLLM's ``CompressedTensorsW8A8Int8`` scheme, SGLang and transformers (with the
  ``compressed-tensors`` package) load: ``torch.nn.Linear`` layers get an int8 ``weight`` and a
  float32 ``weight_scale`` (``[out, 1]`` per channel, ``[1]`` per tensor); their inputs are
  quantized by the engine at run time, dynamically per token (or per tensor). Everything else is
  written float from the original checkpoint and listed in ``ignore`` when it is a linear layer:
  the output head, embedding tables, GPT-2's ``Conv1D`` layers (the format's loaders disagree
  on their layout: docs/io.md), excluded layers, and layers whose quantcore settings the format
  cannot express (asymmetric weights, weight-only). Activation symmetry is written as quantcore runs it
  (``symmetric: false`` for the default per-token asymmetric inputs).
- ``hf`` with ``dtype="fp16"``: a plain float16 checkpoint (every engine loads it).
- ``hf`` with any other scheme: a quantcore folder (``quant_method: "quantcore"``), quantized
  while the float checkpoint is read; transformers loads it with quantcore installed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

import quantcore
from quantcore import plugin

logger = logging.getLogger("quantcore")

CT_FORMAT = "int-quantized"
_STRATEGY = {
    plugin.Granularity.PER_CHANNEL: "channel",
    plugin.Granularity.PER_TENSOR: "tensor",
}
_INPUT_STRATEGY = {
    plugin.Granularity.PER_TOKEN: "token",
    plugin.Granularity.PER_TENSOR: "tensor",
}


def _auto_class(folder: Path) -> Any:
    import transformers

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    for name in config.get("architectures") or ():
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return transformers.AutoModel


def _read_model(source: Path, **kwargs: Any) -> nn.Module:
    if not (source / "config.json").is_file():
        raise quantcore.CheckpointError(
            f"{source}: not a Hugging Face model folder (no config.json); export reads a folder "
            "written by save_pretrained"
        )
    model: nn.Module = _auto_class(source).from_pretrained(source, **kwargs)
    return model.eval()


def export(
    source: str | Path,
    output: str | Path,
    *,
    format: str,
    dtype: str | None = None,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> list[Path]:
    """Write ``source`` (a Hugging Face float folder) to the folder ``output`` in ``format``."""
    src, out = Path(source), Path(output)
    if format == "compressed-tensors":
        return export_compressed_tensors(src, out, include=include, exclude=exclude, dtype=dtype)
    if format == "hf":
        return export_hf(src, out, dtype=dtype or "int8", include=include, exclude=exclude)
    raise quantcore.ConfigError(
        "parameter", "format", f"unknown export format {format!r}", ("compressed-tensors", "hf")
    )


def export_hf(
    source: Path,
    output: Path,
    *,
    dtype: str,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> list[Path]:
    if dtype in ("fp16", "float16"):
        if include or exclude:
            raise quantcore.ConfigError(
                "parameter",
                "include/exclude",
                "a float16 export converts the whole model; --include/--exclude do not apply",
            )
        model = _read_model(source, dtype=torch.float16)
    else:
        from quantcore_transformers.hf_quantizer import QuantcoreConfig

        qconfig = QuantcoreConfig(dtype=dtype, include=include, exclude=exclude)
        model = _read_model(source, quantization_config=qconfig)
    model.save_pretrained(output)  # type: ignore[operator]
    return sorted(output.iterdir())


def _args(num_bits: int, strategy: str, symmetric: bool, dynamic: bool) -> dict[str, Any]:
    return {
        "num_bits": num_bits,
        "type": "int",
        "symmetric": symmetric,
        "strategy": strategy,
        "dynamic": dynamic,
        "group_size": None,
        "block_structure": None,
        "actorder": None,
        "observer": None if dynamic else "minmax",
        "observer_kwargs": {},
    }


def scheme_of(spec: plugin.LayerSpec) -> tuple[dict[str, Any], dict[str, Any]] | str:
    """(weights, input_activations) quantization args for a quantcore linear spec, or why the
    compressed-tensors W8A8 int8 layout cannot express it."""
    weight, act = spec.weight, spec.activation
    if not weight.symmetric:
        return "asymmetric weights (the W8A8 int8 layout has symmetric weights only)"
    if weight.granularity not in _STRATEGY or weight.axis % 2 != 0:
        return f"{weight.granularity.value} weights"
    if act is None:
        return "weight-only (no activation quantization)"
    if act.granularity not in _INPUT_STRATEGY or (act.bits or 8) != 8:
        return f"activations {act.describe()}"
    return (
        _args(8, _STRATEGY[weight.granularity], True, False),
        _args(8, _INPUT_STRATEGY[act.granularity], act.symmetric, True),
    )


def _quantized_tensors(layer: nn.Module, strategy: str) -> dict[str, torch.Tensor]:
    state = layer.state_dict()
    scale = state["weight_scale"].to(torch.float32)
    scale = scale.reshape(-1, 1) if strategy == "channel" else scale.reshape(1)
    return {"weight": state["weight"].contiguous(), "weight_scale": scale.contiguous()}


def export_compressed_tensors(
    source: Path,
    output: Path,
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    dtype: str | None = None,
) -> list[Path]:
    if dtype not in (None, "int8"):
        raise quantcore.ConfigError(
            "parameter",
            "dtype",
            f"the compressed-tensors export writes INT8 (W8A8); dtype {dtype!r} does not apply "
            "(use --format hf for fp16)",
        )
    model = _read_model(source)
    state, qconfig = compressed_tensors_state(model, include=include, exclude=exclude)
    config: Any = getattr(model, "config")  # noqa: B009  # a PreTrainedModel's config
    config.quantization_config = qconfig
    model.save_pretrained(output, state_dict=state)  # type: ignore[operator]
    return sorted(output.iterdir())


def compressed_tensors_state(
    model: nn.Module,
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The float model's state dict with its eligible linear layers in the W8A8 int8 layout,
    and the ``quantization_config`` that describes it. ``model`` is not modified."""
    head = getattr(model, "get_output_embeddings", lambda: None)()
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear and m is not head]
    result = quantcore.quantize(
        model, "int8", include=include if include else linears, exclude=exclude, log_level="ERROR"
    )
    assert result.module is not None and result.manifest is not None
    state = {k: v.detach() for k, v in model.state_dict().items()}
    groups: dict[str, tuple[dict[str, Any], dict[str, Any], list[str]]] = {}
    written: set[str] = set()
    for record in result.manifest.layers:
        scheme = scheme_of(record.spec) if record.name in linears else "not a torch.nn.Linear"
        if isinstance(scheme, str):
            logger.warning("layer %s written float: %s", record.name, scheme)
            continue
        key = json.dumps(scheme, sort_keys=True)
        groups.setdefault(key, (*scheme, []))[2].append(record.name)
        tensors = _quantized_tensors(
            result.module.get_submodule(record.name), scheme[0]["strategy"]
        )
        state.update({f"{record.name}.{k}": v for k, v in tensors.items()})
        written.add(record.name)
    ignore = sorted(n for n, m in model.named_modules() if _is_linear_like(m) and n not in written)
    return state, _quantization_config(groups, ignore)


def _is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _quantization_config(
    groups: Mapping[str, tuple[dict[str, Any], dict[str, Any], list[str]]], ignore: list[str]
) -> dict[str, Any]:
    config_groups = {
        f"group_{i}": {
            # one group: every Linear not ignored; several: each names its layers
            "targets": ["Linear"] if len(groups) == 1 else sorted(names),
            "weights": weights,
            "input_activations": activations,
            "output_activations": None,
            "format": CT_FORMAT,
        }
        for i, (weights, activations, names) in enumerate(groups.values())
    }
    return {
        "quant_method": "compressed-tensors",
        "format": CT_FORMAT,
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": ignore,
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "sparsity_config": {},
        "transform_config": {},
        "version": "0.20.0",
    }
