"""The ``quantcore.integrations`` entry point: run once ``transformers.quantizers.auto`` is
imported. Kept apart from ``hf_quantizer`` (which imports that module itself): when a user
imports ``hf_quantizer`` first, transformers' quantizers load in the middle of it, and
``hf_quantizer`` registers itself once its own import completes."""

from __future__ import annotations

import importlib
import sys

_MODULE = "quantcore_transformers.hf_quantizer"


def register() -> None:
    partial = sys.modules.get(_MODULE)
    if partial is not None and not hasattr(partial, "register"):
        return  # being imported right now: it registers at the end of its import
    importlib.import_module(_MODULE).register()
