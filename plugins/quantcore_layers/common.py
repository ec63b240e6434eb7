"""Helpers shared by the layer families: reading a module's weight safely and building quantized
linear pieces."""

from __future__ import annotations

import torch
from torch import nn

from quantcore import plugin
from quantcore.plugin import ConversionContext, QuantizedLinear

# Hook-based reparametrizations (deprecated in torch) recompute ``module.weight`` in a forward
# pre-hook from parameters the quantized module does not have; quantcore copies forward hooks onto
# the replacement, so such a layer cannot be replaced.
_HOOK_REPARAMETRIZATIONS = ("WeightNorm", "SpectralNorm")


def module_tensor(module: nn.Module, name: str, ctx: ConversionContext) -> torch.Tensor:
    """``module.<name>`` as the layer computes it, or LayerSkipped with the reason it cannot be read.

    Parametrized tensors (``torch.nn.utils.parametrize``, e.g. weight_norm) are read through the
    parametrization, so the quantized weight is the computed value.
    """
    for hook in module._forward_pre_hooks.values():
        if type(hook).__name__ in _HOOK_REPARAMETRIZATIONS:
            raise plugin.LayerSkipped(
                f"{name} is recomputed by the deprecated torch.nn.utils.{type(hook).__name__} hook; "
                "use torch.nn.utils.parametrizations instead (or remove the hook) to quantize it"
            )
    tensor = getattr(module, name)
    if not isinstance(tensor, torch.Tensor):
        raise plugin.LayerSkipped(f"{name} is not a tensor ({type(tensor).__name__})")
    if isinstance(tensor, nn.parameter.UninitializedParameter):
        raise plugin.LayerSkipped(f"{name} is uninitialized (lazy module never run)")
    parametrizations = getattr(module, "parametrizations", None)
    if parametrizations is not None and name in parametrizations:
        kinds = ", ".join(type(p).__name__ for p in parametrizations[name])
        ctx.note(f"{name} quantized from its parametrized value ({kinds})")
    return tensor


def module_bias(module: nn.Module, name: str, ctx: ConversionContext) -> torch.Tensor | None:
    """A float tensor the quantized layer keeps, cloned (shared if reused), or None."""
    value = getattr(module, name, None)
    if value is None:
        return None
    return ctx.clone(module_tensor(module, name, ctx))


def quantized_linear(
    ctx: ConversionContext, weight: torch.Tensor, bias: torch.Tensor | None
) -> QuantizedLinear:
    """A QuantizedLinear for ``x @ weight.T + bias`` with this layer's spec and the scheme's kernels.

    ``bias`` must already be the layer's own copy (``ctx.clone``).
    """
    out_features, in_features = weight.shape
    return QuantizedLinear(
        in_features,
        out_features,
        ctx.quantize_weight(weight),
        bias,
        ctx.spec.activation,
        ctx.kernel_candidates("linear"),
    )


def refuse_overridden_forward(module: nn.Module, base: type[nn.Module]) -> None:
    """Skip a subclass that overrides forward(): its own code decides how the weight is used
    (scaled or offset embeddings, weight standardization, ...), and a quantized replacement would
    silently drop that. Linear subclasses are the exception (their mapper converts them)."""
    if type(module).forward is not base.forward:
        raise plugin.LayerSkipped(
            f"{type(module).__name__} overrides {base.__name__}.forward(); its own code decides how "
            "the weight is used, so it stays float"
        )
