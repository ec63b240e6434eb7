"""Mutation check: plant realistic bugs, one at a time, in a temporary copy of the repository and
show that the test suite catches each one. Not part of the test run (5-20 minutes on 2 shared cores).

    .venv/bin/python tests/mutation_check.py              # every mutation
    .venv/bin/python tests/mutation_check.py scale-63 fp16-keeps-float32   # some of them
    .venv/bin/python tests/mutation_check.py --list

Each mutation replaces one exact snippet of a source file (a snippet that no longer occurs, or
occurs twice, is reported STALE: update the mutation with the code), then runs the tests named
for it in the copy (its ``quantcore``, plugins and ``quantcore_native`` shadow the editable
install through PYTHONPATH; the native kernels built here are copied, C++ is not mutated) with
``QUANTCORE_REQUIRE_TRANSFORMERS=1`` and ``QUANTCORE_REQUIRE_NATIVE=1``, as CI does. CAUGHT: some
test failed; MISSED: every test passed, the suite is blind to that bug. The same tests are first run on the
unmodified copy, which must pass. Exit status 0 only if every mutation is caught.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INT8 = "plugins/quantcore_int8"
ORACLES = "tests/test_int8_oracles.py"
KERNELS = "tests/test_kernels_cpu.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    bug: str
    path: str  # file to edit, relative to the repository root
    old: str
    new: str
    tests: tuple[str, ...]
    shadow_transformers: bool = False  # also make `import transformers` fail
    pytest_args: tuple[str, ...] = field(default=())


MUTATIONS = (
    Mutation(
        "scale-63",
        "weight scale absmax/63 instead of absmax/127 (7-bit weights)",
        "plugins/quantcore_observers/__init__.py",
        "scale = (bound / ((qmax - qmin) / 2)).clamp_min(tiny)",
        "scale = (bound / ((qmax - qmin) / 4)).clamp_min(tiny)",
        (ORACLES, "tests/test_int8_math.py", "tests/zoo/test_zoo_quantize.py"),
        pytest_args=("-m", "slow or not slow"),
    ),
    Mutation(
        "weight-range-63",
        "symmetric weights clamped to -63..63 (7-bit weights through the range, not the scale)",
        f"{INT8}/quantization.py",
        "SYMMETRIC_RANGE = (-127, 127)",
        "SYMMETRIC_RANGE = (-63, 63)",
        (ORACLES, "tests/test_int8_math.py"),
    ),
    Mutation(
        "bits-forced-8",
        "activation_bits always 8, also where the CPU's int8 GEMMs saturate",
        f"{INT8}/cpu_gemms.py",
        "return 8 if cpu_int8_exact() else 7",
        "return 8",
        (ORACLES, KERNELS),
    ),
    Mutation(
        "bits-forced-7",
        "activation_bits always 7, also where 8 bits are exact (accuracy lost for nothing)",
        f"{INT8}/cpu_gemms.py",
        "return 8 if cpu_int8_exact() else 7",
        "return 7",
        (ORACLES, "tests/zoo/test_zoo_quantize.py"),
    ),
    Mutation(
        "reference-ignores-width",
        "the reference backend quantizes activations to 8 bits whatever the CPU's width",
        f"{INT8}/kernels.py",
        "bits = None if activation is None else activation_bits(activation, request.device)",
        "bits = None if activation is None else (activation.bits or 8)",
        (ORACLES, KERNELS),
    ),
    Mutation(
        "fbgemm-refuses",
        "the fbgemm backends' supports() returns False (available but refusing)",
        f"{INT8}/kernels_cpu.py",
        "def supports_fbgemm(request: KernelRequest) -> bool:\n"
        "    return supports_per_token(request, cpu_gemms.fbgemm_int8_exact)",
        "def supports_fbgemm(request: KernelRequest) -> bool:\n    return False",
        (ORACLES, KERNELS),
    ),
    Mutation(
        "onednn-refuses",
        "the oneDNN backend's supports() returns False (available but refusing)",
        f"{INT8}/kernels_cpu.py",
        "def supports_onednn(request: KernelRequest) -> bool:\n"
        "    return supports_per_token(request, cpu_gemms.onednn_int8_exact)",
        "def supports_onednn(request: KernelRequest) -> bool:\n    return False",
        (ORACLES, KERNELS),
    ),
    Mutation(
        "native-refuses",
        "the native int8 backend's supports() returns False (available but refusing)",
        f"{INT8}/kernels_native.py",
        "def supports_native(request: KernelRequest) -> bool:\n"
        "    return supports_per_token(request, native_int8_exact)",
        "def supports_native(request: KernelRequest) -> bool:\n    return False",
        (ORACLES,),
    ),
    Mutation(
        "native-ignores-width",
        "the native int8 kernel quantizes activations to 8 bits whatever the CPU's width",
        f"{INT8}/kernels_native.py",
        "self.bits = cpu_gemms.activation_bits(request.activation, request.device)",
        "self.bits = request.activation.bits or 8",
        (ORACLES,),
    ),
    Mutation(
        "fp16-keeps-float32",
        "the FP16 scheme stores float32 weights",
        "plugins/quantcore_fp16/__init__.py",
        "return QuantizedWeight(FORMAT, weight.to(torch.float16), spec=spec)",
        "return QuantizedWeight(FORMAT, weight.to(torch.float32), spec=spec)",
        (KERNELS,),
    ),
    Mutation(
        "transformers-import-fails",
        "transformers is installed but fails to import (the HF zoo would vanish)",
        "tests/zoo/__init__.py",
        "",
        "",
        ("tests/zoo/test_zoo_float.py",),
        shadow_transformers=True,
    ),
    Mutation(
        "zero-point-floor",
        "asymmetric weight zero points rounded down instead of to nearest",
        "plugins/quantcore_observers/__init__.py",
        "zero_point = (qmin - torch.round(low / scale))",
        "zero_point = (qmin - torch.floor(low / scale))",
        (ORACLES,),
    ),
    Mutation(
        "weights-truncated",
        "weights quantized by truncation instead of rounding",
        "quantcore/affine.py",
        "q = (x.to(torch.float32) / expand_params(scale, x, axis, group_size)).round_()",
        "q = (x.to(torch.float32) / expand_params(scale, x, axis, group_size)).trunc_()",
        (ORACLES,),
    ),
    Mutation(
        "activation-steps-256",
        "asymmetric activation scale divides the range by 2**bits instead of 2**bits - 1",
        f"{INT8}/quantization.py",
        "steps = qmax - qmin  # high / n - low / n",
        "steps = qmax - qmin + 1  # high / n - low / n",
        (ORACLES,),
    ),
    Mutation(
        "embedding-symmetric",
        "embedding tables quantized symmetric (documented: per-row asymmetric)",
        f"{INT8}/__init__.py",
        '"embedding": LayerSpec(\n'
        "        weight=WeightSpec(Granularity.PER_CHANNEL, symmetric=False,",
        '"embedding": LayerSpec(\n'
        "        weight=WeightSpec(Granularity.PER_CHANNEL, symmetric=True,",
        (ORACLES,),
    ),
    Mutation(
        "single-token-8bit",
        "fbgemm's single-token path quantizes 8-bit where the layer runs 7-bit activations",
        f"{INT8}/kernels_cpu.py",
        'y = cpu_gemms.fbgemm_linear(x32, self._packed("fbgemm"), self.bits == 7)',
        'y = cpu_gemms.fbgemm_linear(x32, self._packed("fbgemm"), False)',
        (ORACLES,),
    ),
)


def _copy_tree(target: Path) -> None:
    """The working tree's tracked and untracked-but-not-ignored files (no .venv, no caches),
    and the native kernels as built here (an ignored build product; C++ is not mutated)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    names = [name.decode() for name in filter(None, listed)]
    names += [str(p.relative_to(ROOT)) for p in (ROOT / "native").glob("*/_C*.so")]
    for name in names:
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def _apply(mutation: Mutation, tree: Path) -> str | None:
    """Plant the bug; the reason it cannot be planted, or None."""
    if mutation.shadow_transformers:
        shadow = tree / ".shadow" / "transformers"
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text('raise ImportError("planted by mutation_check")\n')
        return None
    path = tree / mutation.path
    text = path.read_text()
    count = text.count(mutation.old)
    if count != 1:
        return f"{mutation.path}: the snippet occurs {count} times (expected once)"
    path.write_text(text.replace(mutation.old, mutation.new))
    return None


def _run_tests(
    tree: Path, tests: tuple[str, ...], args: tuple[str, ...], shadow: bool
) -> tuple[int, str]:
    paths = [str(tree / ".shadow")] if shadow else []
    paths += [str(tree), str(tree / "plugins"), str(tree / "native")]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "QUANTCORE_REQUIRE_TRANSFORMERS": "1",
        "QUANTCORE_REQUIRE_NATIVE": "1",
    }
    for variable in ("QUANTCORE_UPDATE_BASELINES", "QUANTCORE_SIMULATE_SATURATING_CPU"):
        env.pop(variable, None)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, *tests]
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


def _summary(output: str) -> str:
    """pytest's counts, and how many tests failed in each file."""
    lines = [line for line in output.splitlines() if line.strip()]
    counts = re.sub(r"=+", "", lines[-1]).strip() if lines else "no output"
    failed = Counter(
        line.split(" ")[1].split("::")[0].rsplit("/", 1)[-1]
        for line in lines
        if line.startswith(("FAILED ", "ERROR "))
    )
    return counts + "".join(f"\n          {n:4} failed in {name}" for name, n in failed.items())


def check(mutation: Mutation, clean: dict[tuple[str, ...], str | None]) -> tuple[str, str]:
    """Plant one bug in a fresh copy and run its tests; ``clean`` caches, per test selection,
    why the unmodified copy fails (None: it passes)."""
    selection = (*mutation.pytest_args, *mutation.tests)
    with tempfile.TemporaryDirectory(prefix="quantcore-mutation-") as tmp:
        tree = Path(tmp)
        _copy_tree(tree)
        if selection not in clean:
            code, output = _run_tests(tree, mutation.tests, mutation.pytest_args, False)
            clean[selection] = None if code == 0 else _summary(output)
        if clean[selection] is not None:
            return "BROKEN", f"the tests fail without the mutation: {clean[selection]}"
        reason = _apply(mutation, tree)
        if reason is not None:
            return "STALE", reason
        code, output = _run_tests(
            tree, mutation.tests, mutation.pytest_args, mutation.shadow_transformers
        )
        return ("CAUGHT" if code != 0 else "MISSED"), _summary(output)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    options = parser.parse_args(argv)
    known = {m.name: m for m in MUTATIONS}
    if options.list:
        for m in MUTATIONS:
            print(f"{m.name:26} {m.bug}")
        return 0
    unknown = set(options.names) - set(known)
    if unknown:
        parser.error(f"unknown mutations: {', '.join(sorted(unknown))} (see --list)")
    selected = [known[n] for n in options.names] if options.names else list(MUTATIONS)
    results = []
    clean: dict[tuple[str, ...], str | None] = {}
    for m in selected:
        start = time.monotonic()
        verdict, detail = check(m, clean)
        results.append(verdict)
        print(f"{verdict:7} {m.name:26} {m.bug}")
        print(f"        {' '.join(m.tests)} ({time.monotonic() - start:.0f} s): {detail}")
        sys.stdout.flush()
    caught = results.count("CAUGHT")
    print(f"\n{caught} of {len(results)} planted bugs caught")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
