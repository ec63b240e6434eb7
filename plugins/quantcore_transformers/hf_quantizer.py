"""quantcore as a transformers quantization method (``quant_method: "quantcore"``).

Registered through transformers' public ``register_quantization_config`` / ``register_quantizer``
(the ``quantcore.integrations`` entry point runs :func:`register` once
``transformers.quantizers.auto`` is imported, in whichever order the two libraries are imported).

- A folder saved from a quantcore model holds the quantcore manifest in ``config.json``'s
  ``quantization_config``: ``from_pretrained`` rebuilds the quantized layers on the meta device
  (``quantcore.rebuild_layers``) and transformers fills their tensors from the safetensors files,
  where int8 codes are stored flat so that a float model refuses them (``flat_tensors`` views
  them back); no float weight of those layers is ever created.
- ``from_pretrained(float_folder, quantization_config=QuantcoreConfig(...))`` quantizes each layer
  as soon as its tensors are read (transformers reads the checkpoint one tensor at a time), so
  memory holds the quantized model and the layer being quantized, not the float model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from transformers.quantizers.auto import register_quantization_config, register_quantizer
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

import quantcore
from quantcore import plugin
from quantcore_transformers import flat_tensors
from quantcore_transformers.hf_models import (
    QUANT_METHOD,
    fill_untied,
    flat_shapes,
    ignore_filled_by_quantcore,
    layers_of_manifest,
    manifest_to_dict,
    prepare_loaded_layers,
    set_submodule,
    state_dict_for_saving,
    untie_quantized,
)
from quantcore_transformers.on_load import OnLoadPlan

logger = logging.getLogger("quantcore")


class QuantcoreConfig(QuantizationConfigMixin):
    """``quantization_config`` for quantcore: the settings of :func:`quantcore.quantize`.

    ``dtype`` (scheme), ``include``, ``exclude`` and ``overrides`` mean what they mean there.
    ``manifest`` is what a saved quantized model records (written by quantcore; leave it None
    when asking ``from_pretrained`` to quantize a float checkpoint).
    """

    def __init__(
        self,
        dtype: str = "int8",
        include: Iterable[str] | None = None,
        exclude: Iterable[str] | None = None,
        overrides: Iterable[Mapping[str, Any]] | None = None,
        manifest: Mapping[str, Any] | None = None,
        quantcore_version: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("quant_method", None)
        if kwargs:
            raise TypeError(
                f"QuantcoreConfig got unknown settings {sorted(kwargs)}; it takes dtype, include, "
                "exclude, overrides (as quantcore.quantize does)"
            )
        self.quant_method = QUANT_METHOD  # type: ignore[assignment]  # a registered method
        self.dtype = dtype
        self.include = None if include is None else list(include)
        self.exclude = None if exclude is None else list(exclude)
        self.overrides = None if overrides is None else [dict(o) for o in overrides]
        self.manifest = None if manifest is None else dict(manifest)
        self.quantcore_version = quantcore_version or quantcore.__version__

    def settings(self) -> dict[str, Any]:
        """Keyword arguments for :func:`quantcore.quantize`."""
        return {
            "dtype": self.dtype,
            "include": self.include,
            "exclude": self.exclude,
            "overrides": self.overrides,
        }

    def manifest_object(self) -> quantcore.Manifest:
        if self.manifest is None:
            raise quantcore.SerializationError(
                "this quantcore quantization_config has no manifest: the folder was not saved "
                "from a quantcore model. Save it again from the quantized model (save_pretrained)."
            )
        return quantcore.Manifest.from_json(json.dumps(self.manifest), "config.json")

    @classmethod
    def from_manifest(cls, manifest: quantcore.Manifest) -> QuantcoreConfig:
        return cls(dtype=manifest.scheme, manifest=manifest_to_dict(manifest))


class QuantcoreHfQuantizer(HfQuantizer):
    """Loads quantcore-quantized folders, and quantizes float checkpoints while loading them."""

    requires_calibration = False
    quantization_config: QuantcoreConfig

    def __init__(self, quantization_config: QuantcoreConfig, **kwargs: Any) -> None:
        super().__init__(quantization_config, **kwargs)
        self.plan: OnLoadPlan | None = None
        self.untied: dict[str, str] = {}
        self.stored_flat: dict[str, torch.Size] = {}

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        device_map = kwargs.get("device_map")
        if isinstance(device_map, Mapping) and "disk" in device_map.values():
            raise ValueError(
                "quantcore models cannot be offloaded to disk (device_map with 'disk'); load "
                "them on CPU or GPU"
            )

    def param_needs_quantization(self, model: Any, param_name: str, **kwargs: Any) -> bool:
        return self.plan is not None and self.plan.owns(param_name)

    def update_weight_conversions(self, weight_conversions: Any, model: Any) -> Any:
        """Tensors the folder stores flat get their layer's shape back as they are read."""
        updated = super().update_weight_conversions(  # type: ignore[no-untyped-call]
            weight_conversions, model
        )
        return [*updated, *flat_tensors.converters(self.stored_flat)]

    def _process_model_before_weight_loading(self, model: Any, **kwargs: Any) -> None:
        if self.pre_quantized:
            manifest = self.quantization_config.manifest_object()
            built = plugin.rebuild_layers(model, manifest, device="meta", source="config.json")
            for name, module in built.items():
                set_submodule(model, name, module)
            self.untied = untie_quantized(model, built)
            self.stored_flat = flat_shapes(built)
            ignore_filled_by_quantcore(model, self.untied)
        else:
            self.plan = OnLoadPlan.of(model, self.quantization_config.settings())

    def get_quantize_ops(self) -> Any:
        assert self.plan is not None
        return self.plan.op()

    def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> None:
        if self.plan is not None:
            manifest = self.plan.finish(model)
            self.quantization_config.manifest = manifest_to_dict(manifest)
            self.quantization_config.dtype = manifest.scheme
        else:
            manifest = self.quantization_config.manifest_object()
            prepare_loaded_layers(model, layers_of_manifest(manifest))
            fill_untied(model, self.untied, by_transformers=True)
            vars(model).pop("_keys_to_ignore_on_load_missing", None)
        plugin.attach_manifest(model, manifest)
        plugin.fuse_activations(model)

    def get_state_dict_and_metadata(
        self, model: Any
    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        manifest = quantcore.manifest_of(model) or self.quantization_config.manifest_object()
        return state_dict_for_saving(model, manifest), {}

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False


def quantizer_for(manifest: quantcore.Manifest) -> tuple[QuantcoreConfig, QuantcoreHfQuantizer]:
    """The config and quantizer a quantized model carries so ``save_pretrained`` writes them."""
    config = QuantcoreConfig.from_manifest(manifest)
    return config, QuantcoreHfQuantizer(config, pre_quantized=True)


_registered = False


def register() -> None:
    """Make ``quant_method: "quantcore"`` known to transformers (once per process)."""
    global _registered
    if _registered:
        return
    from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING

    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantization_config(QUANT_METHOD)(QuantcoreConfig)
        register_quantizer(QUANT_METHOD)(QuantcoreHfQuantizer)
    _registered = True


register()  # importing this module (it imports transformers' quantizers) makes it known there
