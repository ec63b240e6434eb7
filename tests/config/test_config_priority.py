"""Priority order, per setting: parameter > file > default; and where the global file is found."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cfg_helpers import small_model, with_unsupported, write_user_config

import quantcore
from quantcore.config import resolve_config, user_config_path


@dataclass(frozen=True)
class Case:
    """One setting: its default, a value set in a file, a different value given as a parameter,
    and a check that quantize() really behaved according to the value that should win."""

    key: str
    default: object
    file_toml: str
    file_value: object
    param: object
    param_value: object
    behaves: Callable[[pytest.LogCaptureFixture, str], None]


def _run(**kwargs: Any) -> quantcore.QuantizationResult:
    return quantcore.quantize(small_model(), **kwargs)


def _dtype(caplog: pytest.LogCaptureFixture, winner: str) -> None:
    kwargs = {"dtype": "fp16"} if winner == "parameter" else {}
    expected = {"parameter": "fp16", "file": "int8", "default": "int8"}[winner]
    assert _run(**kwargs).report.scheme == expected


def _include(caplog: pytest.LogCaptureFixture, winner: str) -> None:
    kwargs = {"include": ["2"]} if winner == "parameter" else {}
    quantized = {r.name for r in _run(**kwargs).report.quantized}
    assert quantized == {"parameter": {"2"}, "file": {"0"}, "default": {"0", "2"}}[winner]


def _exclude(caplog: pytest.LogCaptureFixture, winner: str) -> None:
    kwargs = {"exclude": ["2"]} if winner == "parameter" else {}
    quantized = {r.name for r in _run(**kwargs).report.quantized}
    assert quantized == {"parameter": {"0"}, "file": {"2"}, "default": {"0", "2"}}[winner]


def _overrides(caplog: pytest.LogCaptureFixture, winner: str) -> None:
    kwargs = {"overrides": [{"match": "2", "skip": True}]} if winner == "parameter" else {}
    report = _run(**kwargs).report
    skipped = {r.name for r in report.skipped}
    assert skipped == {"parameter": {"2"}, "file": {"0"}, "default": set()}[winner]


def _disable_plugins(caplog: pytest.LogCaptureFixture, winner: str) -> None:
    kwargs = {"disable_plugins": ["int8"], "dtype": "fp16"} if winner == "parameter" else {}
    if winner == "file":
        kwargs = {"dtype": "int8"}
    plugins = set(_run(**kwargs).report.plugins)
    disabled = {"parameter": "int8", "file": "fp16", "default": None}[winner]
    assert disabled not in plugins
    assert {"int8", "fp16"} - {disabled} <= plugins


def _strict(caplog: pytest.LogCaptureFixture, winner: str) -> None:
    # strict turns a pattern that matches no layer into an error.
    kwargs: dict[str, Any] = {"exclude": ["no_such_layer"]}
    if winner == "parameter":
        kwargs["strict"] = False
    if winner == "file":
        with pytest.raises(quantcore.ConfigValueError, match="no_such_layer"):
            _run(**kwargs)
    else:
        assert len(_run(**kwargs).report.quantized) == 2


def _log_level(caplog: pytest.LogCaptureFixture, winner: str) -> None:
    kwargs = {"log_level": "WARNING"} if winner == "parameter" else {}
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        quantcore.quantize(with_unsupported(), **kwargs)
    warned = any(r.name == "quantcore" and r.levelno == logging.WARNING for r in caplog.records)
    assert warned == (winner != "file")  # the file says ERROR, which hides the warning
    assert logging.getLogger("quantcore").level == logging.NOTSET  # restored after the call


CASES = [
    # dtype's default is None in the configuration: the loaded plugins' default scheme (int8)
    Case("dtype", None, 'dtype = "int8"', "int8", "fp16", "fp16", _dtype),
    Case("include", (), 'include = ["0"]', ("0",), ["2"], ("2",), _include),
    Case("exclude", (), 'exclude = ["0"]', ("0",), "2", ("2",), _exclude),
    Case(
        "overrides",
        (),
        '[[overrides]]\nmatch = "0"\nskip = true',
        "0",
        [{"match": "2", "skip": True}],
        "2",
        _overrides,
    ),
    Case(
        "disable_plugins",
        (),
        'disable_plugins = ["fp16"]',
        ("fp16",),
        ["int8"],
        ("int8",),
        _disable_plugins,
    ),
    Case("strict", False, "strict = true", True, False, False, _strict),
    Case("log_level", None, 'log_level = "error"', "ERROR", "warning", "WARNING", _log_level),
]


def _value(config: quantcore.QuantizeConfig, key: str) -> object:
    value = getattr(config, key)
    if key == "overrides":
        return value[0].match if value else ()
    return value


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.key)
def test_default_when_nothing_sets_it(case: Case, config_home: Path) -> None:
    config = resolve_config()
    assert _value(config, case.key) == case.default
    assert config.source(case.key) == "default"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.key)
def test_file_beats_default(case: Case, config_home: Path) -> None:
    path = write_user_config(config_home, case.file_toml + "\n")
    config = resolve_config()
    assert _value(config, case.key) == case.file_value
    assert config.source(case.key) == f"file {path}"
    untouched = [k for k in quantcore.config.SETTINGS if k != case.key]
    assert all(config.source(k) == "default" for k in untouched)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.key)
def test_parameter_beats_file(case: Case, config_home: Path) -> None:
    write_user_config(config_home, case.file_toml + "\n")
    config = resolve_config(parameters={case.key: case.param})
    assert _value(config, case.key) == case.param_value
    assert config.source(case.key) == "parameter"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.key)
@pytest.mark.parametrize("winner", ["default", "file", "parameter"])
def test_quantize_behaves_by_the_winning_value(
    case: Case, winner: str, config_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if winner != "default":
        write_user_config(config_home, case.file_toml + "\n")
    case.behaves(caplog, winner)


def test_report_records_effective_config(config_home: Path) -> None:
    path = write_user_config(config_home, 'dtype = "fp16"\nexclude = ["0"]\n')
    report = quantcore.quantize(small_model(), exclude=["2"]).report
    assert report.config is not None
    assert report.config.dtype == "fp16" and report.config.source("dtype") == f"file {path}"
    assert report.config.exclude == ("2",) and report.config.source("exclude") == "parameter"
    assert report.scheme == "fp16"


# -- where the global file is found --------------------------------------------------------


def test_explicit_path_beats_environment_and_user_file(
    config_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_user_config(config_home, "strict = true\n")
    env_file = tmp_path / "env.toml"
    env_file.write_text('dtype = "fp16"\n')
    explicit = tmp_path / "explicit.toml"
    explicit.write_text('exclude = ["x"]\n')
    monkeypatch.setenv(quantcore.CONFIG_ENV_VAR, str(env_file))
    config = resolve_config(explicit)
    assert config.exclude == ("x",) and config.source("exclude") == f"file {explicit}"
    assert config.dtype is None, "the environment's file must not be read when a path is given"
    assert config.strict is False, "the user file is only the fallback location"


def test_environment_variable_beats_user_file(
    config_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_user_config(config_home, "strict = true\n")
    env_file = tmp_path / "env.toml"
    env_file.write_text('dtype = "fp16"\n')
    monkeypatch.setenv(quantcore.CONFIG_ENV_VAR, str(env_file))
    config = resolve_config()
    assert config.dtype == "fp16" and config.source("dtype") == f"file {env_file}"
    assert config.strict is False
    assert [f.role for f in config.files if f.used] == [quantcore.CONFIG_ENV_VAR]


def test_user_config_location_follows_xdg_then_platform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert user_config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == (
        tmp_path / "quantcore" / "config.toml"
    )
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr("sys.platform", "linux")
    assert user_config_path({}) == tmp_path / ".config" / "quantcore" / "config.toml"
    monkeypatch.setattr("sys.platform", "darwin")
    assert user_config_path({}) == (
        tmp_path / "Library" / "Application Support" / "quantcore" / "config.toml"
    )
    monkeypatch.setattr("sys.platform", "win32")
    assert user_config_path({"APPDATA": str(tmp_path / "roaming")}) == (
        tmp_path / "roaming" / "quantcore" / "config.toml"
    )


def test_pyproject_ranks_between_explicit_file_and_user_file(
    config_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_user_config(config_home, 'dtype = "fp16"\nstrict = true\n')
    project = tmp_path / "project"
    (project / "src" / "pkg").mkdir(parents=True)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "x"\n\n[tool.quantcore]\ndtype = "int8"\nexclude = ["a"]\n'
    )
    monkeypatch.chdir(project / "src" / "pkg")  # found by walking up
    config = resolve_config()
    assert config.dtype == "int8" and config.source("dtype") == f"pyproject {pyproject}"
    assert config.strict is True  # the user file still fills in what the project leaves unset
    explicit = tmp_path / "explicit.toml"
    explicit.write_text('exclude = ["b"]\n')
    config = resolve_config(explicit)
    assert config.exclude == ("b",) and config.source("exclude") == f"file {explicit}"
    assert config.dtype == "int8"  # pyproject still applies below the explicit file
    assert resolve_config(explicit, parameters={"exclude": "c"}).exclude == ("c",)


def test_mapping_and_resolved_config_as_config_argument(config_home: Path) -> None:
    write_user_config(config_home, "strict = true\n")
    config = resolve_config({"dtype": "fp16"})
    assert config.dtype == "fp16" and config.source("dtype") == "parameter config="
    assert config.strict is False, "a mapping replaces the user file"
    loaded = quantcore.load_config()
    assert loaded.strict is True
    result = quantcore.quantize(small_model(), "fp16", config=loaded)
    assert result.report.scheme == "fp16"
    assert result.report.config is not None and result.report.config.strict is True


def test_disable_plugins_environment_adds_to_configured(
    config_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_user_config(config_home, 'disable_plugins = ["fp16"]\n')
    monkeypatch.setenv(quantcore.DISABLE_ENV_VAR, "someplugin")
    config = resolve_config()
    assert config.disable_plugins == ("fp16", "someplugin")
    assert config.source("disable_plugins").endswith("+ environment")


def test_scheme_is_a_synonym_of_dtype(config_home: Path) -> None:
    path = write_user_config(config_home, 'scheme = "half"\n')
    config = resolve_config()
    assert config.dtype == "half" and config.source("dtype") == f"file {path}"
    assert quantcore.quantize(small_model()).report.scheme == "fp16"  # alias resolved by the plugin
