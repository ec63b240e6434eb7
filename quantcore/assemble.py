"""Assembly: the quantized copy built from the caller's input and the converted layers.

The caller's objects are only read. The copy shares no tensor with the original and is built
without deep-copying the model: containers are copied shallowly, float tensors that stay float
are cloned (shared tensors stay shared), converted layers are swapped in.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from quantcore.context import SharedState

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes held by ``tensors``, counting storage shared between them once."""
    seen: set[tuple[int, str]] = set()
    total = 0
    for t in tensors:
        if t.is_meta:
            total += t.numel() * t.element_size()
            continue
        storage = t.untyped_storage()
        key = (storage.data_ptr(), str(t.device))
        if key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def module_bytes(module: nn.Module) -> int:
    return tensor_bytes([*module.parameters(), *module.buffers()])


def _shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object sharing ``module``'s attributes (its tensor dicts are replaced next)."""
    if parametrize.is_parametrized(module):
        # parametrized modules refuse copy.copy (it pickles); their class is safe to reuse
        new = type(module).__new__(type(module))
        new.__dict__.update(module.__dict__)
        return new
    return copy.copy(module)  # honours __copy__ (GraphModule builds its own class per instance)


def own_copy(module: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` with hook dicts of its own: hooks added to the copy do not
    reach ``module``; everything else (tensors, children) is shared until replaced."""
    new = _shallow_copy(module)
    for attr in _HOOK_DICTS:
        if attr in module.__dict__:
            new.__dict__[attr] = OrderedDict(module.__dict__[attr])
    return new


def assemble_module(
    root: nn.Module, replacements: Mapping[int, nn.Module], shared: SharedState
) -> nn.Module:
    """The quantized copy of ``root``: converted layers swapped in (by ``id`` of the module they
    replace), everything else shallow-copied with cloned tensors (``shared.clones`` first, so a
    tensor the mappers cloned stays shared). Modules and tensors that appear twice in the
    original appear twice here. Never a deep copy of the float model."""
    memo: dict[int, nn.Module] = {}

    def clone_tensor(t: torch.Tensor) -> torch.Tensor:
        cached = shared.clones.get(id(t))
        if cached is None:
            data = t.detach().clone()
            cached = (
                nn.Parameter(data, requires_grad=t.requires_grad)
                if isinstance(t, nn.Parameter)
                else data
            )
            shared.clones[id(t)] = cached
        return cached

    def copy_module(module: nn.Module) -> nn.Module:
        if id(module) in memo:
            return memo[id(module)]
        replacement = replacements.get(id(module))
        if replacement is not None:
            new = replacement
            for attr in ("_forward_hooks", "_forward_pre_hooks"):
                getattr(new, attr).update(getattr(module, attr))
        else:
            new = own_copy(module)
            # clone what the copy holds: a module's own copy protocol (__getstate__) may hand
            # out tensors its live attributes do not keep (a released packed-kernel weight)
            new._parameters = OrderedDict(
                (k, None if p is None else cast(nn.Parameter, clone_tensor(p)))
                for k, p in new._parameters.items()
            )
            new._buffers = OrderedDict(
                (k, None if b is None else clone_tensor(b)) for k, b in new._buffers.items()
            )
            new._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
            new._modules = OrderedDict()
        memo[id(module)] = new
        if replacement is None:
            for key, child in module._modules.items():
                new._modules[key] = None if child is None else copy_module(child)
        return new

    return copy_module(root)


def assemble_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    converted: Mapping[str, Mapping[str, torch.Tensor]],
    shared: SharedState,
) -> dict[str, torch.Tensor]:
    """The quantized state dict: each converted layer's tensors (``converted``: prefix ->
    tensors, keys relative to it) in place of its float ones, every other tensor cloned, in the
    order of the input (a layer's keys where its first float key was)."""
    output: dict[str, torch.Tensor] = {}
    for key, t in state_dict.items():
        if any(key.startswith(prefix) for prefix in converted):
            continue
        clone = shared.clones.get(id(t))
        if clone is None:
            clone = shared.clones[id(t)] = t.detach().clone()
        output[key] = clone
    for prefix, tensors in converted.items():
        output.update({prefix + key: t for key, t in tensors.items()})
    order = {key.rpartition(".")[0]: i for i, key in enumerate(state_dict)}

    def position(key: str) -> tuple[int, str]:
        return (order.get(key.rpartition(".")[0], len(order)), key)

    return {k: output[k] for k in sorted(output, key=position)}
