"""The optional native extension (``quantcore_int8._native``, built from ``csrc/`` at install time):
loaded once, and when it cannot be, the reason, so the pure-torch kernels take over knowingly."""

from __future__ import annotations

import functools
import importlib
import logging
import os
from typing import Any

import torch

_log = logging.getLogger("quantcore")

# Set to 1 to run without the native kernels (the pure-torch ones take over), e.g. to compare them.
DISABLE_VARIABLE = "QUANTCORE_DISABLE_NATIVE"
_REBUILD = (
    "reinstall quantcore into an environment that has torch and a C++ compiler with "
    "`pip install --no-build-isolation quantcore` (or `make demo` in a clone)"
)


@functools.cache
def unavailable_reason() -> str | None:
    """None when the native kernels can run here, else why not (logged once)."""
    reason = _check()
    if reason is not None:
        _log.info("quantcore_int8: native int8 kernels are off: %s", reason)
    return reason


def _check() -> str | None:
    if os.environ.get(DISABLE_VARIABLE, "") not in ("", "0"):
        return f"{DISABLE_VARIABLE} is set"
    try:
        extension = importlib.import_module("quantcore_int8._native")
    except ImportError as error:
        return f"the extension is not built or does not load ({error}); {_REBUILD}"
    built: str = extension.torch_version()
    running = torch.__version__.split("+")[0]
    if built != running:
        return f"the extension was built against torch {built}, this is torch {running}; {_REBUILD}"
    if not extension.cpu_supported():
        return "fbgemm does not support this CPU"
    return None


def available() -> bool:
    return unavailable_reason() is None


def extension() -> Any:
    """The extension module, ``quantcore_int8._native`` (typed in ``_native.pyi``); call it only
    where :func:`available` is true."""
    return importlib.import_module("quantcore_int8._native")
