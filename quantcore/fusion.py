"""Activation fusion: a quantized linear layer whose output goes straight into an activation
(GELU, ReLU, SiLU) hands that activation to its kernel, which applies it to each output row
while the row is still in cache. That saves a pass over the largest tensor of a transformer's MLP block
and its allocation; a kernel that cannot fuse leaves it to the layer, which applies it after the
call, so the result is the same either way.

Only data flow that is certain is fused: consecutive children of a plain ``nn.Sequential``, and
consecutive calls of a module whose ``forward`` does nothing but pass its input through children
(``x = self.fc(x); x = self.act(x); ...``, or nested calls; its bytecode equals one of the
templates below), as Hugging Face's ``*Intermediate`` and many ``*MLP`` blocks do; and the gate
of a gated MLP, ``down(act(gate(x)) * up(x))``. The activation is recognized by what it computes,
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
_PROBE_TOLERANCE = 1e-5
# generator, coroutine, *args/**kwargs, closure ...; not the __future__ flags of the defining file
_CODE_KIND_FLAGS = 0xFFFF


# A template: its bytecode, how many children it calls, and which (k, k + 1) call pairs pass one
# call's output straight into the next call and nowhere else.
_Template = tuple[CodeType, int, tuple[tuple[int, int], ...]]

# The gated MLP of LLaMA, Mistral, Qwen and Gemma: down(act(gate(x)) * up(x)).
_GATED_FORMS = (
    "y = self.c3(self.c1(self.c0(x)) * self.c2(x))\nreturn y",
    "return self.c3(self.c1(self.c0(x)) * self.c2(x))",
)


def _compiled(body: str) -> CodeType:
    source = "def forward(self, x):\n" + "".join(f"    {line}\n" for line in body.splitlines())
    namespace: dict[str, Any] = {}
    exec(compile(source, "<quantcore fusion template>", "exec"), namespace)
    code: CodeType = namespace["forward"].__code__
    return code


@functools.cache
def _templates() -> tuple[_Template, ...]:
    """The bytecode of the ``forward(self, x)`` shapes whose data flow is certain, compiled by this
    interpreter so that they compare equal to its bytecode; ``c<k>`` is the k-th child called.

    Chains pass ``x`` through children, one statement after another (``x = self.c1(self.c0(x))``:
    one or two calls deep), ending in ``return x`` or ``return <calls>``; the gated forms are
    :data:`_GATED_FORMS`."""
    templates: list[_Template] = []
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
                pairs = tuple((k, k + 1) for k in range(calls - 1))
                templates.append((_compiled("\n".join(lines)), calls, pairs))
    templates += [(_compiled(form), 4, ((0, 1),)) for form in _GATED_FORMS]
    return tuple(templates)


def _call_pairs(forward: CodeType) -> list[tuple[str, str]] | None:
    """(first, second) attribute names where ``forward`` passes the first child's output only
    to the second, for a forward of one of the template shapes; None for any other."""
    for template, calls, pairs in _templates():
        if (
            forward.co_code == template.co_code
            and forward.co_consts == template.co_consts
            and forward.co_argcount == template.co_argcount
            and forward.co_posonlyargcount == 0
            and forward.co_kwonlyargcount == 0
            and forward.co_flags & _CODE_KIND_FLAGS == template.co_flags & _CODE_KIND_FLAGS
            and len(forward.co_names) == len(template.co_names)
        ):
            names = [forward.co_names[template.co_names.index(f"c{k}")] for k in range(calls)]
            return [(names[a], names[b]) for a, b in pairs]
    return None


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
    pairs = _call_pairs(forward) if isinstance(forward, CodeType) else None
    if pairs is None:
        return []
    names = dict(children)
    return [(a, b) for a, b in pairs if a in names and b in names]


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
    probe, references = _probe()
    try:
        with torch.no_grad():
            out = module(probe.clone())
    except Exception:  # not elementwise on a 1-D tensor: not an activation this can fuse
        return None
    if not isinstance(out, torch.Tensor) or out.shape != probe.shape or out.dtype != probe.dtype:
        return None
    for name, reference in references.items():
        if torch.allclose(out, reference, rtol=_PROBE_TOLERANCE, atol=_PROBE_TOLERANCE):
            return name
    return None


@functools.cache
def _probe() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The probe input and what each fusable activation gives on it (computed once)."""
    probe = torch.cat([torch.linspace(-20.0, 20.0, 8001), torch.tensor([0.0, -0.0, 1e-6, -1e-6])])
    return probe, {name: function(probe) for name, function in FUSABLE_ACTIVATIONS.items()}
