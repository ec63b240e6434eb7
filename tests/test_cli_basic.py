"""The console script as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantcore", *args], capture_output=True, text=True, timeout=120
    )


def test_demo_prints_reports_and_errors() -> None:
    out = run("demo")
    assert out.returncode == 0, out.stderr
    assert "scheme int8" in out.stdout and "scheme fp16" in out.stdout
    assert "skipped   custom" in out.stdout and "output vs float: relative error" in out.stdout


def test_plugins_json_lists_builtins() -> None:
    out = run("plugins", "--json")
    assert out.returncode == 0, out.stderr
    plugins = {p["name"]: p for p in json.loads(out.stdout)}
    assert plugins["int8"]["status"] == "loaded" and plugins["int8"]["distribution"] == "quantcore"
    assert plugins["int8"]["provides"]["scheme"] == ["int8"]


def test_unknown_command_is_a_usage_error() -> None:
    out = run("frobnicate")
    assert out.returncode == 2 and "invalid choice" in out.stderr
