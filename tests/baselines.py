"""Recorded accuracy baselines: each model's (or layer test's) relative error, pinned.

A zoo test calls ``ZOO.check(entry name, scheme, error)``, any other test ``check_error(scheme,
error)`` (keyed by its pytest node id, in tests/baselines.json): it fails when the error exceeds
``FACTOR`` times the recorded value (a regression), or falls below the recorded value divided by
``FACTOR`` (an improvement: record it in the same commit, so the next regression is measured
from there). ``FLOOR`` is added to both sides, so an entry whose error is tiny does not fail on
float summation order (another kernel may round the last bit differently).

INT8 errors are recorded per activation width ("int8/8bit", "int8/7bit"): CPUs without
AVX512-VNNI run 7-bit activations (``quantcore_int8.cpu_gemms.activation_bits``), and the
7-bit numbers are measured on any CPU by simulating one (tests/conftest.py).

Regenerate (runs the tests that record baselines, at the native width and at simulated 7 bits,
with ``QUANTCORE_UPDATE_BASELINES`` set, which records instead of checking; a full run on a CPU
with exact 8-bit activations rewrites the files, so keys of removed tests go)::

    .venv/bin/python tests/baselines.py             # every test that records a baseline
    .venv/bin/python tests/baselines.py tests/layers/test_conv.py   # only these tests' keys
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

UPDATE_ENV_VAR = "QUANTCORE_UPDATE_BASELINES"
SIMULATE_ENV_VAR = "QUANTCORE_SIMULATE_SATURATING_CPU"  # read by tests/conftest.py
FACTOR = 1.5
FLOOR = 2e-5
TESTS = Path(__file__).resolve().parent


def activation_width_key(scheme: str) -> str:
    """The key an error is recorded under: the scheme, and for int8 the activation width this
    process's CPU (or its simulation) gives layers that leave the width open."""
    if scheme != "int8":
        return scheme
    import torch
    from quantcore_int8.cpu_gemms import activation_bits

    from quantcore.plugin import ActivationSpec

    return f"int8/{activation_bits(ActivationSpec(), torch.device('cpu'))}bit"


class Baselines:
    """One checked-in JSON file: ``{test key: {width key: relative error}}``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.measured: dict[str, dict[str, float]] = {}
        self._recorded: dict[str, dict[str, float]] | None = None

    def recorded(self) -> dict[str, dict[str, float]]:
        if self._recorded is None:
            self._recorded = json.loads(self.path.read_text()) if self.path.exists() else {}
        return self._recorded

    def check(self, key: str, scheme: str, error: float) -> None:
        width = activation_width_key(scheme)
        if os.environ.get(UPDATE_ENV_VAR):
            self.measured.setdefault(key, {})[width] = error
            return
        recorded = self.recorded().get(key, {}).get(width)
        where = f"{key} [{width}]"
        assert recorded is not None, (
            f"{where}: no baseline in {self.path.relative_to(TESTS.parent)}; record it with "
            f"`.venv/bin/python tests/baselines.py` and commit the file"
        )
        assert error <= recorded * FACTOR + FLOOR, (
            f"{where}: relative error {error:.6f} exceeds {FACTOR}x its baseline {recorded:.6f}"
        )
        assert error >= recorded / FACTOR - FLOOR, (
            f"{where}: relative error {error:.6f} improved beyond noise on its baseline "
            f"{recorded:.6f}; record it (`.venv/bin/python tests/baselines.py`) in this commit"
        )

    def write(self) -> None:
        """Merge what this run measured into the file (keys it did not run stay as they were),
        or replace the file's keys with them (``QUANTCORE_UPDATE_BASELINES=replace``)."""
        if not self.measured:
            return
        merged = {} if os.environ.get(UPDATE_ENV_VAR) == "replace" else self.recorded()
        for key, widths in self.measured.items():
            merged.setdefault(key, {}).update({w: round(e, 7) for w, e in widths.items()})
        self.path.write_text(json.dumps(dict(sorted(merged.items())), indent=1) + "\n")


ZOO = Baselines(TESTS / "zoo" / "baselines.json")
PER_TEST = Baselines(TESTS / "baselines.json")
ALL = (ZOO, PER_TEST)
_CHECKS: Counter[str] = Counter()


def check_error(scheme: str, error: float) -> None:
    """Hold the running test's relative error ||quantized - float|| / ||float|| to its recorded
    baseline (tests/baselines.py). The key is the test's node id, numbered from the second
    check one test makes."""
    test = os.environ["PYTEST_CURRENT_TEST"].rsplit(" (", 1)[0]
    _CHECKS[test] += 1
    n = _CHECKS[test]
    PER_TEST.check(test if n == 1 else f"{test}#{n}", scheme, error)


def _recording_files() -> list[str]:
    """The test files that check a baseline: what a full update runs."""
    root = TESTS.parent
    calls = ("check_error(", "check_layer(", "ZOO.check(")
    return sorted(
        str(path.relative_to(root))
        for path in TESTS.rglob("test_*.py")
        if any(call in path.read_text() for call in calls)
    )


def main(argv: list[str]) -> int:
    """Run the selected tests twice (native width, then simulated 7-bit) in record mode."""
    selection = argv or _recording_files()
    root = TESTS.parent
    command = [sys.executable, "-m", "pytest", "-q", "-m", "slow or not slow", *selection]
    # A full run on a CPU that computes 8-bit activations exactly records every key afresh
    # (keys of removed tests go); otherwise it merges, keeping what it cannot measure here.
    fresh = not argv and activation_width_key("int8") == "int8/8bit"
    for simulate in ("", "1"):
        mode = "replace" if fresh and not simulate else "1"
        env = {**os.environ, UPDATE_ENV_VAR: mode, SIMULATE_ENV_VAR: simulate}
        print(("simulated 7-bit CPU: " if simulate else "native CPU: ") + " ".join(command))
        if subprocess.run(command, cwd=root, env=env).returncode != 0:
            return 1
    print("updated; review with `git diff tests/*/baselines.json`")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
