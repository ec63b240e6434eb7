from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import quantcore


@pytest.fixture
def plugin_manager() -> quantcore.QuantcorePluginManager:
    """A fresh manager with the installed plugins: no test shares plugin state with another."""
    return quantcore.create_plugin_manager()


@pytest.fixture(autouse=True)
def _isolate_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(quantcore.DISABLE_ENV_VAR, raising=False)
    yield


def fingerprint(module: nn.Module) -> dict[str, object]:
    """What the 'always copy' promise covers: values, dtypes, devices, requires_grad, types."""
    out: dict[str, object] = {}
    for name, t in [
        *module.named_parameters(remove_duplicate=False),
        *module.named_buffers(remove_duplicate=False),
    ]:
        data = t.detach().cpu().contiguous()
        digest = hashlib.sha256(
            data.view(torch.uint8).numpy().tobytes() if data.numel() else b""
        ).hexdigest()
        out[name] = (digest, t.dtype, t.device, t.requires_grad, type(t).__name__, id(t))
    out["__types__"] = [
        (n, type(m).__name__) for n, m in module.named_modules(remove_duplicate=False)
    ]
    out["__training__"] = [m.training for m in module.modules()]
    return out
