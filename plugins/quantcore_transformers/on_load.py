"""Quantizing while transformers loads a float checkpoint.

transformers reads a checkpoint one tensor at a time into a model built on the meta device. The
plan claims, before loading, the layers a quantcore mapper converts (outermost first, as
:func:`quantcore.quantize` plans them); transformers hands every tensor of those layers to the
op below instead of the model. Once a layer has all its tensors it is quantized with
:func:`quantcore.quantize` (the user's include / exclude / overrides apply to its full name) and
swapped in; its float tensors are dropped with the float layer, and their pages of the
memory-mapped checkpoint released (:func:`page_out`). Layers tied to another one (an
output head sharing the embedding table) stay float, so transformers can tie them.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.core_model_loading import ConversionOps

import quantcore
from quantcore import plugin
from quantcore_transformers.hf_models import set_submodule

logger = logging.getLogger("quantcore")


def _claims(model: nn.Module, registry: plugin.Registry) -> dict[str, nn.Module]:
    tied: set[str] = set()
    for target, source in getattr(model, "all_tied_weights_keys", {}).items():
        tied.update((target.rpartition(".")[0], source.rpartition(".")[0]))
    claimed: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if any(name.startswith(c + ".") for c in claimed) or name in tied:
            continue
        for mapper in registry.layer_mappers:
            if mapper.matches(module):
                if mapper.convert is not None:
                    claimed[name] = module
                break
    return claimed


def _under(name: str, layer: str) -> bool:
    return name.startswith(layer + ".") if layer else True


def _path_to(name: str, module: nn.Module) -> nn.Module:
    """Containers that put ``module`` at ``name``, so patterns see the layer's full name."""
    root = node = nn.Module()
    *parents, last = name.split(".")
    for part in parents:
        child = nn.Module()
        node.add_module(part, child)
        node = child
    node.add_module(last, module)
    return root


_MADV_PAGEOUT = 21  # Linux 5.4+: reclaim the pages; their contents never change


def page_out(tensors: Iterable[torch.Tensor]) -> None:
    """Let the kernel reclaim the pages of float tensors quantcore is done with. transformers
    hands over views into the memory-mapped checkpoint, and every page read stays resident
    (counted in the process's memory) while the file is mapped: until loading ends, and then
    as long as the model keeps a float tensor of that file (a norm's weight). Without this, the
    whole float checkpoint ends up resident while its layers are quantized."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    page = mmap.PAGESIZE
    for t in tensors:
        if t.device.type != "cpu":
            continue
        start = t.data_ptr()
        first = -(-start // page) * page  # whole pages inside the tensor only
        last = (start + t.numel() * t.element_size()) // page * page
        if last > first:
            libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_PAGEOUT)


@dataclass
class OnLoadPlan:
    settings: Mapping[str, Any]
    layers: dict[str, nn.Module]
    records: list[quantcore.LayerRecord] = field(default_factory=list)
    reports: list[quantcore.LayerReport] = field(default_factory=list)
    scheme: str = ""
    manager: quantcore.QuantcorePluginManager | None = None

    @classmethod
    def of(cls, model: nn.Module, settings: Mapping[str, Any]) -> OnLoadPlan:
        manager = quantcore.create_plugin_manager()
        registry = manager.registry()
        scheme = registry.scheme(str(settings.get("dtype") or "int8")).name
        return cls(dict(settings), _claims(model, registry), scheme=scheme, manager=manager)

    def layer_of(self, param_name: str) -> str | None:
        owner = param_name.rpartition(".")[0]
        for layer in self.layers:
            if owner == layer or _under(owner, layer):
                return layer
        return None

    def owns(self, param_name: str) -> bool:
        return self.layer_of(param_name) is not None

    def op(self) -> ConversionOps:
        return _QuantizeOnLoad(self)

    def receive(self, model: nn.Module, name: str, tensor: torch.Tensor) -> None:
        """Put one float tensor into its (meta) layer; quantize the layer once it is complete."""
        layer = self.layer_of(name)
        assert layer is not None
        module = self.layers[layer]
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        tensor._is_hf_initialized = True  # type: ignore[attr-defined]  # transformers: loaded
        if attr in owner._parameters:
            owner._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
            owner._parameters[attr]._is_hf_initialized = True  # type: ignore[union-attr]
        else:
            owner._buffers[attr] = tensor
        if any(t.is_meta for t in module.state_dict().values()):
            return
        self._quantize(model, layer, module)

    def _quantize(self, model: nn.Module, layer: str, module: nn.Module) -> None:
        settings = dict(self.settings)
        result = quantcore.quantize(
            _path_to(layer, module), **settings, plugin_manager=self.manager, log_level="ERROR"
        )
        assert result.module is not None and result.manifest is not None
        self.reports.extend(result.report.layers)
        self.records.extend(result.manifest.layers)
        if result.manifest.layers:  # else it stays float: the module transformers filled
            quantized = result.module.get_submodule(layer)
            quantized._is_hf_initialized = True  # transformers must not initialize it again
            set_submodule(model, layer, quantized)
            kept = {t.data_ptr() for t in quantized.state_dict().values()}
            page_out(t for t in module.state_dict().values() if t.data_ptr() not in kept)
        del self.layers[layer]

    def finish(self, model: nn.Module) -> quantcore.Manifest:
        """The manifest of what was quantized; layers whose tensors never came stay float."""
        if self.layers:
            logger.warning(
                "%d layer(s) were not quantized: the checkpoint lacks some of their tensors "
                "(transformers initialized them): %s",
                len(self.layers),
                ", ".join(list(self.layers)[:10]),
            )
        quantized = sum(1 for r in self.reports if r.status == "quantized")
        logger.info(
            "quantcore: quantized %d layer(s) with %s while loading", quantized, self.scheme
        )
        for report in self.reports:
            if report.status == "skipped" and not report.requested:
                logger.warning("quantcore: layer %s kept in float: %s", report.name, report.reason)
        return quantcore.Manifest(self.scheme, tuple(self.records), quantcore.__version__)


class _QuantizeOnLoad(ConversionOps):
    """transformers' conversion op: tensors of claimed layers go to the plan, not the model."""

    def __init__(self, plan: OnLoadPlan) -> None:
        self.plan = plan

    def convert(
        self,
        input_dict: dict[str, Any],
        source_patterns: Any = None,
        target_patterns: Any = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        model = kwargs["model"]
        missing = kwargs.get("missing_keys")
        for name, value in input_dict.items():
            tensor = value[0] if isinstance(value, list) else value
            self.plan.receive(model, name, tensor)
            if missing is not None:
                missing.discard(name)
        return {}
