from __future__ import annotations

from pathlib import Path

import pytest


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


