"""torch's process-wide settings, left as a quantizing call found them whatever a plugin does,
and the quantcore logger's level for the duration of a call."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch

logger = logging.getLogger("quantcore")


@contextmanager
def preserved_global_state() -> Iterator[None]:
    """Leave torch's global settings as they were, whatever a plugin does or however it fails:
    thread count, default dtype and device, grad mode, the deterministic-algorithms flag and the
    CPU random generator."""
    threads = torch.get_num_threads()
    default_dtype = torch.get_default_dtype()
    default_device = torch.get_default_device()
    grad = torch.is_grad_enabled()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    rng = torch.random.get_rng_state()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        if torch.get_default_dtype() != default_dtype:
            torch.set_default_dtype(default_dtype)
        if torch.get_default_device() != default_device:
            # None removes the device context a plugin installed: back to torch's own default
            torch.set_default_device(None if default_device.type == "cpu" else default_device)
        torch.set_grad_enabled(grad)
        if (
            torch.are_deterministic_algorithms_enabled() != deterministic
            or torch.is_deterministic_algorithms_warn_only_enabled() != warn_only
        ):
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.random.set_rng_state(rng)


@contextmanager
def logger_level(level: str | None) -> Iterator[None]:
    if level is None:
        yield
        return
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)
