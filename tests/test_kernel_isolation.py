"""The kernel must never import a plugin package: plugins depend on the kernel, not the reverse."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_PACKAGES = sorted(
    p.name for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").exists()
)


def test_plugin_packages_exist() -> None:
    assert {"quantcore_int8", "quantcore_fp16", "quantcore_layers"} <= set(PLUGIN_PACKAGES)


def test_kernel_source_imports_no_plugin() -> None:
    offenders = []
    for path in (ROOT / "quantcore").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in PLUGIN_PACKAGES]
    assert offenders == []


def test_importing_the_kernel_loads_no_plugin_module() -> None:
    code = (
        "import sys, quantcore; quantcore.create_plugin_manager(load_entry_points=False);"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {PLUGIN_PACKAGES!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plugins_use_only_the_public_api() -> None:
    """First-party plugins import `quantcore` (its public names), never the kernel's modules."""
    offenders = []
    for path in (ROOT / "plugins").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("quantcore.")
            ):
                offenders.append(f"{path.relative_to(ROOT)}: from {node.module}")
            if isinstance(node, ast.Import):
                offenders += [
                    f"{path.relative_to(ROOT)}: import {a.name}"
                    for a in node.names
                    if a.name.startswith("quantcore.")
                ]
    assert offenders == []
