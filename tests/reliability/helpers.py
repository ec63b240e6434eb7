"""Shared pieces of the reliability suites: hypothesis profiles, case counters, state snapshots.

(The fixtures and the end-of-run summary live in conftest.py.)

Budgets: the default profile keeps every property small so the fast suite stays fast; tests marked
``slow`` use :func:`slow_settings`. Hypothesis runs derandomized (a fixed seed per test), so a
failure reproduces on every run and machine; ``QUANTCORE_FUZZ_RANDOM=1`` explores other inputs
(then ``pytest --hypothesis-seed=N`` replays a run; ``print_blob`` prints any failure's reproducer).

Every fuzz test counts the cases it tried with the ``tally`` fixture; the counts are printed at the
end of the run and, when ``QUANTCORE_RELIABILITY_SUMMARY`` names a file, written there as JSON
(docs/reliability.md records the figures of the last run).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import HealthCheck, settings

SUMMARY_ENV_VAR = "QUANTCORE_RELIABILITY_SUMMARY"
RANDOM_ENV_VAR = "QUANTCORE_FUZZ_RANDOM"

_COMMON: dict[str, Any] = {
    "deadline": None,
    "database": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
}
settings.register_profile(
    "quantcore", max_examples=60, derandomize=not os.environ.get(RANDOM_ENV_VAR), **_COMMON
)
settings.load_profile("quantcore")


def fast_settings(max_examples: int) -> settings:
    return settings(settings.get_profile("quantcore"), max_examples=max_examples)


def slow_settings(max_examples: int) -> settings:
    """A bigger budget for ``@pytest.mark.slow`` runs (CI runs them, bounded to a few minutes)."""
    return settings(settings.get_profile("quantcore"), max_examples=max_examples)


TALLY: Counter[str] = Counter()


class Tally:
    """Counts what a suite tried: ``tally.add("fuzz cases")``, ``tally.add("faults injected")``."""

    def add(self, what: str, n: int = 1) -> None:
        TALLY[what] += n


class Uncounted(Tally):
    """For a test that reruns another's body: its cases are counted once, under its own name."""

    def add(self, what: str, n: int = 1) -> None:
        pass


@dataclass(frozen=True)
class TorchState:
    """torch's process-wide settings a quantize() call must leave as it found them."""

    threads: int
    default_dtype: torch.dtype
    grad: bool
    rng: bytes
    deterministic: bool
    deterministic_warn_only: bool
    default_device: str

    @classmethod
    def capture(cls) -> TorchState:
        return cls(
            threads=torch.get_num_threads(),
            default_dtype=torch.get_default_dtype(),
            grad=torch.is_grad_enabled(),
            rng=bytes(torch.random.get_rng_state().numpy().tobytes()),
            deterministic=torch.are_deterministic_algorithms_enabled(),
            deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
            default_device=str(torch.get_default_device()),
        )


def meddle_with_torch_state() -> None:
    """What a misbehaving plugin might do to torch's global settings before it fails."""
    torch.set_num_threads(torch.get_num_threads() + 1)
    torch.set_default_dtype(torch.float64)
    torch.set_grad_enabled(not torch.is_grad_enabled())
    torch.rand(3)  # advances the global random generator
    torch.use_deterministic_algorithms(
        not torch.are_deterministic_algorithms_enabled(), warn_only=True
    )
    torch.set_default_device("meta")
