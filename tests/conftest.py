from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from baselines import ALL as BASELINES
from baselines import SIMULATE_ENV_VAR
from torch import nn

import quantcore


@pytest.fixture
def plugin_manager() -> quantcore.QuantcorePluginManager:
    """A fresh manager with the installed plugins: no test shares plugin state with another."""
    return quantcore.create_plugin_manager()


@pytest.fixture(scope="session")
def _empty_config_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xdg-config-home")


@pytest.fixture(autouse=True)
def _isolate_environment(
    monkeypatch: pytest.MonkeyPatch, _empty_config_home: Path
) -> Iterator[None]:
    # No test may read the developer's own configuration file or environment.
    monkeypatch.delenv(quantcore.DISABLE_ENV_VAR, raising=False)
    monkeypatch.delenv(quantcore.CONFIG_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(_empty_config_home))
    yield


def fingerprint(module: nn.Module) -> dict[str, object]:
    """What the 'always copy' promise covers: values, dtypes, devices, requires_grad, types."""
    out: dict[str, object] = {}
    for name, t in [
        *module.named_parameters(remove_duplicate=False),
        *module.named_buffers(remove_duplicate=False),
    ]:
        data = t.detach().cpu().contiguous().reshape(-1)  # 0-d tensors cannot be viewed as bytes
        digest = hashlib.sha256(
            data.view(torch.uint8).numpy().tobytes() if data.numel() else b""
        ).hexdigest()
        out[name] = (digest, t.dtype, t.device, t.requires_grad, type(t).__name__, id(t))
    out["__types__"] = [
        (n, type(m).__name__) for n, m in module.named_modules(remove_duplicate=False)
    ]
    out["__training__"] = [m.training for m in module.modules()]
    return out


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An XDG config home of this test's own, and a working directory without a pyproject.toml."""
    home = tmp_path / "xdg"
    (home / "quantcore").mkdir(parents=True)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


def simulate_saturating_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this CPU look like one whose int8 GEMMs saturate at 8-bit activations (AVX2, AVX512
    without VNNI): its exactness self-tests answer no, so layers that leave the width open run
    7-bit activations, in the reference and the fast kernels alike (which are exact at 7 bits
    on any CPU). Kernels are prepared when a model is quantized: simulate before that."""
    from quantcore_int8 import cpu_gemms, kernels_native

    for name in ("cpu_int8_exact", "onednn_int8_exact", "fbgemm_int8_exact"):
        monkeypatch.setattr(cpu_gemms, name, lambda: False)
    monkeypatch.setattr(kernels_native, "native_int8_exact", lambda: False)


ACTIVATION_WIDTHS = ("cpu", "7bit")  # the CPU's own activation width, and a simulated 7-bit CPU


def use_activation_width(width: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run as ``width`` says ("cpu": this CPU; "7bit": simulated without AVX512-VNNI) and return
    the activation bits layers that leave the width open must use: 7 where the CPU's int8 GEMMs
    saturate at 8 bits (the self-test's hardware answer, or the simulation), else 8."""
    if width == "7bit":
        simulate_saturating_cpu(monkeypatch)
        return 7
    from quantcore_int8 import cpu_gemms

    return 8 if cpu_gemms.cpu_int8_exact() else 7


def require_native_kernels() -> None:
    """Skip the test where the native kernels are off, with the reason; a failure instead where
    ``QUANTCORE_REQUIRE_NATIVE=1`` (CI sets it), so a broken build cannot pass as skips."""
    import quantcore_native

    reason = quantcore_native.unavailable_reason()
    if reason is None:
        return
    if os.environ.get("QUANTCORE_REQUIRE_NATIVE", "") not in ("", "0"):
        pytest.fail(f"QUANTCORE_REQUIRE_NATIVE is set but the native kernels are off: {reason}")
    pytest.skip(f"native kernels are off: {reason}")


@pytest.fixture
def saturating_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test runs as on a CPU without AVX512-VNNI (see simulate_saturating_cpu)."""
    simulate_saturating_cpu(monkeypatch)


_SESSION_PATCH = pytest.MonkeyPatch()


def pytest_sessionstart(session: pytest.Session) -> None:
    """QUANTCORE_SIMULATE_SATURATING_CPU=1 runs the whole session (module-scoped fixtures too)
    as on a CPU without AVX512-VNNI; a test that starts a fresh Python process runs that
    process natively."""
    if os.environ.get(SIMULATE_ENV_VAR):
        simulate_saturating_cpu(_SESSION_PATCH)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In record mode (QUANTCORE_UPDATE_BASELINES=1), write the errors the run measured."""
    _SESSION_PATCH.undo()
    for baselines in BASELINES:
        baselines.write()
