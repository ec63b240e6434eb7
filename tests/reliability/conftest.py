"""Fixtures of the reliability suites, and the end-of-run summary of what they tried."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from reliability.helpers import SUMMARY_ENV_VAR, TALLY, Tally, TorchState


@pytest.fixture
def tally() -> Tally:
    return Tally()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TALLY:
        return
    terminalreporter.section("quantcore reliability figures")
    for what, n in sorted(TALLY.items()):
        terminalreporter.write_line(f"{what}: {n}")
    target = os.environ.get(SUMMARY_ENV_VAR)
    if target:
        Path(target).write_text(json.dumps(dict(sorted(TALLY.items())), indent=2) + "\n")


@pytest.fixture
def torch_state_unchanged() -> Iterator[TorchState]:
    """Fails the test if torch's global settings differ after it (and restores them)."""
    before = TorchState.capture()
    yield before
    after = TorchState.capture()
    torch.set_num_threads(before.threads)
    torch.set_default_dtype(before.default_dtype)
    torch.set_grad_enabled(before.grad)
    torch.use_deterministic_algorithms(
        before.deterministic, warn_only=before.deterministic_warn_only
    )
    torch.set_default_device(before.default_device)
    assert after == before
