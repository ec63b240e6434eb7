"""State dicts, with the repairs a real checkpoint often needs before it is one: a training
checkpoint that wraps the state dict ({"state_dict": ...}, {"model": ...},
{"model_state_dict": ...}) and the ``module.`` prefix DataParallel adds to every name."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from quantcore import plugin
from quantcore_adapters.modules import unwrap

# Keys under which training scripts store the model's state dict, tried in this order.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
# Prefixes a wrapper adds to every name: DataParallel / DDP, and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MAX_DEPTH = 3


def is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def strip_prefixes(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[Mapping[str, torch.Tensor], tuple[str, ...]]:
    """Remove a prefix that every name carries because the model was wrapped when saved."""
    notes: list[str] = []
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) and len(k) > len(prefix) for k in state_dict):
                state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
                notes.append(
                    f"removed the {prefix!r} prefix from every tensor name (the model was "
                    "saved wrapped in DataParallel or torch.compile)"
                )
                changed = True
    return state_dict, tuple(notes)


def adapt_state_dict_object(obj: object, source: str = "") -> plugin.AdaptedInput:
    assert isinstance(obj, Mapping)
    state_dict, notes = strip_prefixes(obj)
    where = f"{source}: " if source else ""
    return plugin.AdaptedInput(
        state_dict=state_dict,
        description=f"{where}state dict with {len(state_dict)} tensors",
        notes=notes,
    )


def find_wrapped(obj: object, depth: int = 0) -> tuple[object, tuple[str, ...]] | None:
    """The state dict (or module) a checkpoint dict wraps, and the keys leading to it."""
    if not isinstance(obj, Mapping) or depth >= _MAX_DEPTH:
        return None
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, nn.Module) or is_state_dict(inner):
            return inner, (key,)
        found = find_wrapped(inner, depth + 1)
        if found is not None:
            return found[0], (key, *found[1])
    return None


def is_checkpoint(obj: object) -> bool:
    return not is_state_dict(obj) and find_wrapped(obj) is not None


def adapt_checkpoint_object(obj: object, source: str = "") -> plugin.AdaptedInput:
    found = find_wrapped(obj)
    assert found is not None and isinstance(obj, Mapping)
    inner, path = found
    location = "".join(f"[{k!r}]" for k in path)
    others = sorted(str(k) for k in obj if k != path[0])
    note = f"took the model from checkpoint entry {location}" + (
        f"; ignored the other entries ({', '.join(others[:8])}{' ...' if len(others) > 8 else ''})"
        if others
        else ""
    )
    if isinstance(inner, nn.Module):
        module, notes = unwrap(inner)
        return plugin.AdaptedInput(
            module=module,
            description=f"module {type(module).__name__} from a checkpoint",
            notes=(note, *notes),
        )
    adapted = adapt_state_dict_object(inner, source)
    return plugin.AdaptedInput(
        state_dict=adapted.state_dict,
        description=f"{adapted.description} (from checkpoint entry {location})",
        notes=(note, *adapted.notes),
    )


def explain_state_dict(obj: object) -> str | None:
    if not isinstance(obj, Mapping):
        return None
    if not obj:
        return "the mapping is empty"
    for k, v in obj.items():
        if not isinstance(k, str):
            return f"key {k!r} is not a string"
        if not isinstance(v, torch.Tensor):
            return f"entry {k!r} is of type {type(v).__name__}, not a tensor"
    return None


def explain_checkpoint(obj: object) -> str | None:
    if not isinstance(obj, Mapping):
        return None
    keys = ", ".join(repr(k) for k in list(obj)[:8])
    wanted = ", ".join(repr(k) for k in WRAPPER_KEYS)
    return f"no {wanted} entry holds a state dict or module (keys: {keys})"
