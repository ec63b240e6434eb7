"""Activation fusion: a quantized linear layer whose output goes straight into an activation
(GELU, ReLU) hands that activation to its kernel, which applies it to each output row while the
row is still in cache. That saves a pass over the largest tensor of a transformer's MLP block
and its allocation; a kernel that cannot fuse leaves it to the layer, which applies it after the
call, so the result is the same either way.

Only data flow that is certain is fused: consecutive children of a plain ``nn.Sequential``, and
consecutive calls of a module whose ``forward`` does nothing but pass its input through children
(``x = self.fc(x); x = self.act(x); ...``, or nested calls; its bytecode equals one of the
templates below), as Hugging Face's ``*Intermediate`` and many ``*MLP`` blocks do. The activation is recognized by what it computes,
not by its class: a parameter-free module whose outputs on a probe over [-20, 20] match one of
:data:`~quantcore.modules.FUSABLE_ACTIVATIONS`. Neither side may carry hooks, and a linear layer
used in more than one place is left alone.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections import Counter
from types import CodeType
from typing import Any

import torch
from torch import nn

from quantcore.modules import FUSABLE_ACTIVATIONS, QuantizedLinear

logger = logging.getLogger("quantcore")


_MAX_STATEMENTS = 4  # x = ...; x = ...; ...: enough for the MLP blocks of common models


@functools.cache
def _chain_templates() -> tuple[tuple[CodeType, int], ...]:
    """The bytecode of every ``forward(self, x)`` that only passes ``x`` through children, one
    statement after another (``x = self.c1(self.c0(x))``: one or two calls deep), ending in
    ``return x`` or in ``return <calls>``; with how many children it calls. ``c<k>`` is the k-th
    child called. Compiled by this interpreter, so they compare equal to its bytecode."""
    templates = []
    for statements in range(1, _MAX_STATEMENTS + 1):
        for depths in itertools.product((1, 2), repeat=statements):
            calls = sum(depths)
            if calls < 2:
                continue
            for returns_calls in (False, True):
                lines, called = [], 0
                for depth in depths:
                    value = "x"
                    for _ in range(depth):
                        value, called = f"self.c{called}({value})", called + 1
                    lines.append(f"x = {value}")
                lines.append("return " + (lines.pop()[4:] if returns_calls else "x"))
                source = "def forward(self, x):\n" + "".join(f"    {line}\n" for line in lines)
                namespace: dict[str, Any] = {}
                exec(compile(source, "<quantcore fusion template>", "exec"), namespace)
                templates.append((namespace["forward"].__code__, calls))
    return tuple(templates)


def _call_chain(forward: CodeType) -> list[str] | None:
    """The attribute names a chain-shaped ``forward`` calls, in data-flow order, or None."""
    for template, calls in _chain_templates():
        if (
            forward.co_code == template.co_code
            and forward.co_consts == template.co_consts
            and forward.co_argcount == template.co_argcount
            and forward.co_posonlyargcount == 0
            and forward.co_kwonlyargcount == 0
            and forward.co_flags & _CODE_KIND_FLAGS == template.co_flags & _CODE_KIND_FLAGS
            and len(forward.co_names) == len(template.co_names)
        ):
            return [forward.co_names[template.co_names.index(f"c{k}")] for k in range(calls)]
    return None


_PROBE_TOLERANCE = 1e-5
# generator, coroutine, *args/**kwargs, closure ...; not the __future__ flags of the defining file
_CODE_KIND_FLAGS = 0xFFFF


def fuse_activations(model: nn.Module) -> dict[str, str]:
    """Fuse every activation that directly follows a quantized linear layer in ``model`` (in
    place: the activation child becomes ``nn.Identity``). Returns {linear layer name: activation}.
    """
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    fused: dict[str, str] = {}
    for parent_name, parent in list(model.named_modules()):
        for linear_attr, act_attr in _linear_then_activation(parent):
            linear = getattr(parent, linear_attr)
            activation = getattr(parent, act_attr)
            if not isinstance(linear, QuantizedLinear) or linear.fused_activation is not None:
                continue
            if uses[id(linear)] > 1 or uses[id(activation)] > 1:
                continue
            if _has_hooks(linear) or _has_hooks(activation):
                continue
            name = recognize_activation(activation)
            if name is None:
                continue
            linear.fuse_activation(name)
            setattr(parent, act_attr, nn.Identity())
            fused[f"{parent_name}.{linear_attr}" if parent_name else linear_attr] = name
    if fused:
        logger.debug("activations fused into their linear kernels: %s", fused)
    return fused


def _linear_then_activation(parent: nn.Module) -> list[tuple[str, str]]:
    """(linear child, activation child) attribute pairs where the first's output is the second's
    only input, as far as the parent's code shows it."""
    children = list(parent.named_children())
    if type(parent).forward is nn.Sequential.forward:
        return [(a, b) for (a, _), (b, _) in itertools.pairwise(children)]
    forward = getattr(type(parent).forward, "__code__", None)
    if not isinstance(forward, CodeType):
        return []
    chain = _call_chain(forward)
    names = dict(children)
    if chain is None or not all(name in names for name in chain):
        return []
    return list(itertools.pairwise(chain))


def _has_hooks(module: nn.Module) -> bool:
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or getattr(module, "_forward_hooks_with_kwargs", None)
        or getattr(module, "_forward_pre_hooks_with_kwargs", None)
    )


def recognize_activation(module: nn.Module) -> str | None:
    """The :data:`~quantcore.modules.FUSABLE_ACTIVATIONS` name of what ``module`` computes, or
    None. Only parameter- and buffer-free leaf modules are probed."""
    if isinstance(module, QuantizedLinear) or any(True for _ in module.children()):
        return None
    if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
        return None
    probe = torch.cat([torch.linspace(-20.0, 20.0, 8001), torch.tensor([0.0, -0.0, 1e-6, -1e-6])])
    try:
        with torch.no_grad():
            out = module(probe.clone())
    except Exception:  # not elementwise on a 1-D tensor: not an activation this can fuse
        return None
    if not isinstance(out, torch.Tensor) or out.shape != probe.shape or out.dtype != probe.dtype:
        return None
    for name, function in FUSABLE_ACTIVATIONS.items():
        if torch.allclose(out, function(probe), rtol=_PROBE_TOLERANCE, atol=_PROBE_TOLERANCE):
            return name
    return None
