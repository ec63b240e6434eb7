"""transformers models in quantcore: the input adapter that marks a quantized ``PreTrainedModel``
(alone, or inside a ``SentenceTransformer`` or any container) so ``save_pretrained`` writes a
``quantization_config``, and the helpers the quantizer shares with it.

Nothing here imports transformers at module level: a model that holds a ``PreTrainedModel`` has
imported it already, and classes are recognized by name and module.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

import quantcore
from quantcore import plugin

logger = logging.getLogger("quantcore")

QUANT_METHOD = "quantcore"
_PRETRAINED = ("transformers.modeling_utils", "PreTrainedModel")
_WRAPPERS = ("DataParallel", "DistributedDataParallel", "OptimizedModule")


def is_pretrained_model(module: object) -> bool:
    return any((c.__module__, c.__name__) == _PRETRAINED for c in type(module).__mro__)


def outermost_pretrained(root: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(prefix, model) for each ``PreTrainedModel`` in ``root`` not inside another one."""
    found: list[str] = []
    for name, module in root.named_modules():
        if any(name == f or name.startswith(f + ".") for f in found):
            continue
        if is_pretrained_model(module):
            found.append(name)
            yield name, module


def accepts(obj: object) -> bool:
    if not isinstance(obj, nn.Module) or type(obj).__name__ in _WRAPPERS:
        return False
    return next(outermost_pretrained(obj), None) is not None


def adapt(obj: object) -> plugin.AdaptedInput:
    assert isinstance(obj, nn.Module)
    return plugin.AdaptedInput(
        module=obj, description=f"module {type(obj).__name__}", finalize=finalize
    )


def finalize(model: nn.Module, manifest: quantcore.Manifest) -> None:
    """Give each transformers model inside ``model`` (a fresh copy or a loaded model, never the
    caller's) its own config with a ``quantization_config`` and the quantizer that
    ``save_pretrained`` asks for, and recompute buffers left on the meta device."""
    from quantcore_transformers.hf_quantizer import quantizer_for, register

    register()
    for prefix, found in outermost_pretrained(model):
        hf_model: Any = found  # a PreTrainedModel: attributes torch's typing does not know
        sub = sub_manifest(manifest, prefix)
        fill_untied(hf_model, untie_quantized(hf_model, layers_of_manifest(sub)))
        recompute_meta_buffers(hf_model)
        if not sub.layers:
            continue
        qconfig, quantizer = quantizer_for(sub)
        old = hf_model.config
        new = copy.deepcopy(old)
        new.quantization_config = qconfig
        for module in hf_model.modules():
            if getattr(module, "config", None) is old:
                module.config = new
        hf_model.hf_quantizer = quantizer
        hf_model.is_quantized = True
        hf_model.quantization_method = QUANT_METHOD
        plugin.attach_manifest(hf_model, sub)


def recompute_meta_buffers(hf_model: nn.Module) -> None:
    """Buffers a model computes when built (rotary ``inv_freq``, ``position_ids``) are in no
    file; a skeleton built on the meta device has none. transformers' own initialization
    recomputes exactly those (every other tensor is marked as initialized first)."""
    if not any(b.is_meta for b in hf_model.buffers()):
        return
    model: Any = hf_model
    try:
        for t in [*hf_model.parameters(), *hf_model.buffers()]:
            if not t.is_meta:
                t._is_hf_initialized = True  # type: ignore[attr-defined]
        model._move_missing_keys_from_meta_to_device(set(), None, None, None)
        model.initialize_weights()
    except Exception as exc:  # the kernel then names what is still on meta
        logger.warning("recomputing %s's buffers failed: %s", type(hf_model).__name__, exc)


def sub_manifest(manifest: quantcore.Manifest, prefix: str) -> quantcore.Manifest:
    """The layers under module ``prefix``, named relative to it."""
    if not prefix:
        return manifest
    start = prefix + "."
    layers = tuple(
        dataclasses.replace(layer, name=layer.name[len(start) :])
        for layer in manifest.layers
        if layer.name.startswith(start)
    )
    return quantcore.Manifest(manifest.scheme, layers, manifest.quantcore_version)


def layers_of_manifest(manifest: quantcore.Manifest) -> tuple[str, ...]:
    return tuple(layer.name for layer in manifest.layers)


def manifest_to_dict(manifest: quantcore.Manifest) -> dict[str, Any]:
    return dict(json.loads(manifest.to_json()))


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    parent._modules[child] = module


def untie_quantized(model: nn.Module, names: Iterable[str]) -> dict[str, str]:
    """A quantized layer holds its own tensors: transformers must not tie a float parameter to
    it (an output head tied to the embedding table is quantized, and stored, separately).
    Returns the ties dropped from ``model`` itself (target -> source parameter names)."""
    quantized = set(names)

    def inside(param: str) -> bool:
        owner = param.rpartition(".")[0]
        return any(owner == q or owner.startswith(q + ".") for q in quantized)

    dropped: dict[str, str] = {}
    for found in model.modules():
        module: Any = found
        tied = getattr(module, "all_tied_weights_keys", None)
        if isinstance(tied, Mapping) and tied:
            kept = {t: s for t, s in tied.items() if not inside(t) and not inside(s)}
            if module is model:
                dropped = {t: s for t, s in tied.items() if t not in kept}
            module.all_tied_weights_keys = kept
    return dropped


def ignore_filled_by_quantcore(model: nn.Module, dropped: Mapping[str, str]) -> None:
    """transformers' load report must not call a float parameter that :func:`fill_untied` fills
    (GPT-2's head, stored once as the embedding table) missing: for this load, the model lists
    it among the keys it may lack (transformers' own rule for such keys)."""
    floats = [name for pair in dropped.items() for name in pair if _is_parameter(model, name)]
    if floats:
        found: Any = model
        own = list(type(found)._keys_to_ignore_on_load_missing or ())
        found._keys_to_ignore_on_load_missing = [*own, *(f"^{re.escape(n)}$" for n in floats)]


def _is_parameter(model: nn.Module, name: str) -> bool:
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    return owner._parameters.get(attr) is not None  # a quantized tensor is a buffer


def _flagged(tensor: torch.Tensor) -> bool:
    return bool(getattr(tensor, "_is_hf_initialized", False))


def fill_untied(
    model: nn.Module, dropped: Mapping[str, str], *, by_transformers: bool = False
) -> None:
    """A float parameter that was tied to a now quantized one and is not in the checkpoint
    (GPT-2's lm_head, saved once as the embedding table) gets the dequantized values: the
    model computes what it did when the table was quantized and the head shared it.
    ``by_transformers``: what transformers did not mark as loaded is missing; otherwise
    (quantcore.load) what is still on the meta device is."""
    for target, source in dropped.items():
        for missing, present in ((target, source), (source, target)):
            owner_name, _, attr = missing.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            current = owner._parameters.get(attr)
            if current is None:
                continue  # quantized: a buffer
            if _flagged(current) if by_transformers else not current.is_meta:
                continue  # loaded from the file
            src_name, _, src_attr = present.rpartition(".")
            values = getattr(model.get_submodule(src_name), src_attr).detach()
            owner._parameters[attr] = nn.Parameter(values.to(current.dtype), requires_grad=False)
            logger.info("%s: not in the checkpoint, set from the quantized %s", missing, present)


def state_dict_for_saving(
    model: nn.Module, manifest: quantcore.Manifest
) -> dict[str, torch.Tensor]:
    """The state dict as a Hugging Face folder stores it (:func:`stored_flat`), with tensors
    shared between layers written separately: transformers drops one of two tied tensors when
    saving and ties them again when loading, which a quantized layer (buffers, not parameters)
    cannot take part in."""
    seen: set[tuple[str, int]] = set()
    out: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():
        ptr = (str(t.device), t.untyped_storage().data_ptr())
        out[key] = t.clone() if ptr in seen and t.numel() else t
        seen.add(ptr)
    return stored_flat(out, manifest)


def _in_layers(key: str, layers: set[str]) -> bool:
    owner = key.rpartition(".")[0]
    while owner:
        if owner in layers:
            return True
        owner = owner.rpartition(".")[0]
    return "" in layers


def stored_flat(
    state_dict: Mapping[str, torch.Tensor], manifest: quantcore.Manifest
) -> dict[str, torch.Tensor]:
    """Hugging Face folders store the integer tensors of quantized layers flat (1-D), their
    shapes being in the manifest. A float model loading the folder (transformers without
    quantcore) then refuses them for their shape, instead of taking int8 codes as its weights;
    quantcore views them back (``flat_tensors`` for transformers, :func:`quantcore.load`)."""
    layers = {layer.name for layer in manifest.layers}
    return {
        key: t.reshape(-1)
        if t.dim() > 1 and not t.is_floating_point() and _in_layers(key, layers)
        else t
        for key, t in state_dict.items()
    }


def flat_shapes(built: Mapping[str, nn.Module]) -> dict[str, torch.Size]:
    """Full names and shapes of the tensors of the rebuilt layers ``built`` that a Hugging Face
    folder stores flat (:func:`stored_flat`)."""
    return {
        f"{name}.{key}": t.shape
        for name, module in built.items()
        for key, t in module.state_dict(keep_vars=True).items()
        if t.dim() > 1 and not t.is_floating_point()
    }


def loaded_device(module: nn.Module) -> torch.device:
    for t in [*module.parameters(), *module.buffers()]:
        if not t.is_meta:
            return t.device
    return torch.device("cpu")


def prepare_loaded_layers(model: nn.Module, names: Iterable[str]) -> None:
    """Layers whose tensors transformers assigned one by one pick their kernels again (as after
    ``.to()``), and their float tensors stay frozen as quantcore built them."""
    for name in names:
        module = model.get_submodule(name)
        tensors = module.state_dict(keep_vars=True).items()
        missing = [n for n, t in tensors if not getattr(t, "_is_hf_initialized", False)]
        if missing:  # transformers made up values for them (its load report says MISSING)
            raise quantcore.SerializationError(
                f"quantized layer {name!r}: tensor(s) {missing} are not in the checkpoint; the "
                "folder is incomplete or its config.json belongs to another model. Save it "
                "again from the quantized model."
            )
        module.to(loaded_device(module))
        for p in module.parameters():
            p.requires_grad_(False)
