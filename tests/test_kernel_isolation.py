"""The kernel must never import a plugin package: plugins depend on the kernel, not the reverse."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def _quantcore_imports(path: Path) -> list[str]:
    """Every import of quantcore or one of its modules in ``path``, as written."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "quantcore":
            found += [f"from {node.module} import {a.name}" for a in node.names]
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] == "quantcore"]
    return found


def test_plugins_use_only_the_public_api() -> None:
    """First-party plugins build on `quantcore.plugin` (the plugin-author namespace) and may call
    the users' API in `quantcore` (the transformers integration quantizes and saves); they import
    no kernel module, and read no plugin-author name through `quantcore` (deprecated there)."""
    import quantcore

    allowed = re.compile(
        r"^(import quantcore|from quantcore import plugin|from quantcore(\.plugin)? import \w+)$"
    )
    offenders = []
    for path in (ROOT / "plugins").rglob("*.py"):
        offenders += [
            f"{path.relative_to(ROOT)}: {line}"
            for line in _quantcore_imports(path)
            if not allowed.match(line)
            or (
                line.startswith("from quantcore import ")
                and line.split()[-1] != "plugin"
                and line.split()[-1] not in quantcore.__all__
            )
        ]
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "quantcore"
                and node.attr not in quantcore.__all__
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: quantcore.{node.attr}")
    assert offenders == []


def test_user_and_plugin_namespaces() -> None:
    """`quantcore` holds what users call; `quantcore.plugin` what plugin authors build with. A
    plugin-author name read from `quantcore` still resolves, with a DeprecationWarning."""
    import quantcore
    import quantcore.plugin

    assert not {"Scheme", "hookimpl", "QuantizedModule", "LayerSkipped"} & set(quantcore.__all__)
    assert {"quantize", "save", "load", "QuantizationResult"} <= set(quantcore.__all__)
    for name in quantcore.plugin.__all__:
        assert getattr(quantcore.plugin, name) is not None, name
    with pytest.warns(DeprecationWarning, match="use quantcore.plugin.Scheme"):
        assert quantcore.Scheme is quantcore.plugin.Scheme  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="no_such_name"):
        quantcore.no_such_name  # type: ignore[attr-defined]  # noqa: B018


def _runtime_imports(path: Path) -> set[str]:
    """The kernel modules ``path`` imports when it is imported (module level, outside
    ``if TYPE_CHECKING:``; imports inside functions run later and do not count)."""
    found: set[str] = set()
    kernel = {p.stem for p in (ROOT / "quantcore").glob("*.py")}

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit([*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])])
            if isinstance(node, ast.ImportFrom) and node.module == "quantcore":
                found.update(a.name for a in node.names if a.name in kernel)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("quantcore."):
                found.add(node.module.split(".")[1])  # type: ignore[union-attr]

    visit(ast.parse(path.read_text()).body)
    return found


def test_kernel_modules_import_each_other_without_a_loop() -> None:
    graph = {
        p.stem: _runtime_imports(p)
        for p in (ROOT / "quantcore").glob("*.py")
        if p.stem not in ("__init__", "__main__")
    }
    done: set[str] = set()

    def walk(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            walk(target, (*path, module))
        done.add(module)

    for module in sorted(graph):
        walk(module, ())
    assert graph["registrations"] <= {"errors", "specs"}  # the records sit near the bottom
