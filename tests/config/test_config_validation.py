"""Every malformed configuration is an error naming the file, the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
from cfg_helpers import small_model, write_user_config

import quantcore
from quantcore.config import effective_config, resolve_config

# (id, file text, error type, key named, fragments the message must contain)
MALFORMED = [
    (
        "unknown-key",
        'dtyp = "int8"\n',
        quantcore.UnknownConfigKeyError,
        "dtyp",
        ["unknown key", "allowed: dtype, include", "did you mean 'dtype'?"],
    ),
    (
        "unknown-override-key",
        '[[overrides]]\nmatch = "0"\ngranularty = "per_tensor"\n',
        quantcore.UnknownConfigKeyError,
        "overrides[0].granularty",
        ["allowed: match, layer_type, dtype, granularity", "did you mean 'granularity'?"],
    ),
    (
        "dtype-not-string",
        "dtype = 8\n",
        quantcore.ConfigTypeError,
        "dtype",
        ["must be a string", "got integer 8"],
    ),
    (
        "include-string",
        'include = "encoder.*"\n',
        quantcore.ConfigTypeError,
        "include",
        ["must be a list of strings", 'write ["encoder.*"]'],
    ),
    (
        "exclude-item-not-string",
        "exclude = [1]\n",
        quantcore.ConfigTypeError,
        "exclude[0]",
        ["must be a string", "got integer 1"],
    ),
    (
        "disable-plugins-bool",
        "disable_plugins = true\n",
        quantcore.ConfigTypeError,
        "disable_plugins",
        ["must be a list of strings"],
    ),
    (
        "strict-string",
        'strict = "yes"\n',
        quantcore.ConfigTypeError,
        "strict",
        ["must be a boolean (true or false)", "got string 'yes'"],
    ),
    (
        "overrides-table",
        '[overrides]\nmatch = "0"\n',
        quantcore.ConfigTypeError,
        "overrides",
        ["must be an array of tables ([[overrides]]"],
    ),
    (
        "override-symmetric-string",
        '[[overrides]]\nmatch = "0"\nsymmetric = "no"\n',
        quantcore.ConfigTypeError,
        "overrides[0].symmetric",
        ["must be a boolean"],
    ),
    (
        "unknown-granularity",
        '[[overrides]]\nmatch = "0"\ngranularity = "per_chanel"\n',
        quantcore.ConfigValueError,
        "overrides[0].granularity",
        [
            "unknown weight granularity 'per_chanel'",
            "allowed: per_tensor, per_channel, per_group",
            "did you mean 'per_channel'?",
        ],
    ),
    (
        "unknown-log-level",
        'log_level = "warn"\n',
        quantcore.ConfigValueError,
        "log_level",
        [
            "unknown log level 'warn'",
            "allowed: DEBUG, INFO, WARNING, ERROR, CRITICAL",
            "did you mean 'WARNING'?",
        ],
    ),
    (
        "bad-regex",
        'exclude = ["re:enc(oder"]\n',
        quantcore.ConfigValueError,
        "exclude[0]",
        ["invalid regular expression 're:enc(oder'"],
    ),
    (
        "override-without-selector",
        '[[overrides]]\ndtype = "fp16"\n',
        quantcore.ConfigValueError,
        "overrides[0]",
        ["needs match (layer-name pattern) or layer_type"],
    ),
    (
        "override-sets-nothing",
        '[[overrides]]\nmatch = "0"\n',
        quantcore.ConfigValueError,
        "overrides[0]",
        ["sets nothing", "allowed: dtype, granularity, group_size, symmetric, observer, skip"],
    ),
    (
        "synonym-twice",
        'dtype = "int8"\nscheme = "fp16"\n',
        quantcore.ConfigValueError,
        "scheme",
        ["second time"],
    ),
    ("empty-dtype", 'dtype = " "\n', quantcore.ConfigValueError, "dtype", ["must not be empty"]),
]

# Names the plugins define: only checkable once plugins are loaded.
UNKNOWN_NAMES = [
    (
        "unknown-scheme",
        'dtype = "in8"\n',
        "dtype",
        [
            "unknown scheme 'in8'",
            "'int8' (aliases: qint8, dynamic_int8; from plugin 'int8'",
            "'fp16' (aliases: float16, half; from plugin 'fp16'",
            "did you mean 'int8'?",
        ],
    ),
    (
        "unknown-override-scheme",
        '[[overrides]]\nmatch = "0"\ndtype = "fp61"\n',
        "overrides[0].dtype",
        ["unknown scheme 'fp61'", "did you mean 'fp16'?"],
    ),
    (
        "unknown-observer",
        '[[overrides]]\nmatch = "0"\nobserver = "minmux"\n',
        "overrides[0].observer",
        [
            "unknown observer 'minmux'",
            "'minmax' (from plugin 'observers'",
            "did you mean 'minmax'?",
        ],
    ),
]


@pytest.mark.parametrize(
    ("text", "error", "key", "fragments"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_malformed_file_is_an_error(
    config_home: Path, text: str, error: type[Exception], key: str, fragments: list[str]
) -> None:
    path = write_user_config(config_home, text)
    with pytest.raises(error) as info:
        resolve_config()
    exc = info.value
    assert isinstance(exc, quantcore.ConfigError) and isinstance(exc, quantcore.QuantcoreError)
    assert exc.source == f"file {path}" and exc.key == key
    message = str(exc)
    assert message.startswith(f"file {path}: key {key!r}: ")
    for fragment in fragments:
        assert fragment in message
    # quantize() reads the same file and refuses it the same way: nothing is silently ignored.
    with pytest.raises(error):
        quantcore.quantize(small_model())


@pytest.mark.parametrize(
    ("text", "key", "fragments"),
    [case[1:] for case in UNKNOWN_NAMES],
    ids=[case[0] for case in UNKNOWN_NAMES],
)
def test_unknown_plugin_name_in_file_is_an_error(
    config_home: Path, text: str, key: str, fragments: list[str]
) -> None:
    path = write_user_config(config_home, text)
    resolve_config()  # structurally fine: names are checked against the loaded plugins
    for call in (effective_config, lambda: quantcore.quantize(small_model())):
        with pytest.raises(quantcore.ConfigValueError) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"file {path}: key {key!r}: ")
        for fragment in fragments:
            assert fragment in message


def test_invalid_toml_names_the_file(config_home: Path) -> None:
    path = write_user_config(config_home, "exclude = [\n")
    with pytest.raises(quantcore.ConfigFileError, match="not valid TOML") as info:
        resolve_config()
    assert str(path) in str(info.value)


def test_missing_explicit_file_and_environment_file(
    config_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(quantcore.ConfigFileError, match="config= / --config does not exist"):
        resolve_config(missing)
    monkeypatch.setenv(quantcore.CONFIG_ENV_VAR, str(missing))
    with pytest.raises(
        quantcore.ConfigFileError, match=r"\$QUANTCORE_CONFIG does not exist"
    ) as info:
        quantcore.quantize(small_model())
    assert str(missing) in str(info.value)


def test_missing_user_file_is_fine(config_home: Path) -> None:
    config = resolve_config()
    assert [(f.role, f.used) for f in config.files] == [("user config", False)]


def test_pyproject_errors_name_the_table_key(
    config_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    pyproject = project / "pyproject.toml"
    pyproject.write_text("[tool.quantcore]\nstrictt = true\n")
    monkeypatch.chdir(project)
    with pytest.raises(quantcore.UnknownConfigKeyError) as info:
        resolve_config()
    assert str(info.value).startswith(f"pyproject {pyproject}: key 'tool.quantcore.strictt'")
    assert "did you mean 'strict'?" in str(info.value)


def test_wrong_parameter_values_are_config_errors(config_home: Path) -> None:
    with pytest.raises(
        quantcore.ConfigTypeError, match="parameter: key 'strict': must be a boolean"
    ):
        quantcore.quantize(small_model(), strict="yes")  # type: ignore[call-overload]
    with pytest.raises(quantcore.ConfigValueError, match="did you mean 'per_tensor'"):
        quantcore.quantize(small_model(), overrides=[{"match": "0", "granularity": "per_tensr"}])
    with pytest.raises(quantcore.UnknownConfigKeyError, match="did you mean 'skip'"):
        quantcore.quantize(small_model(), overrides=[{"match": "0", "skp": True}])
    with pytest.raises(quantcore.ConfigValueError, match="unknown log level"):
        quantcore.quantize(small_model(), log_level="loud")


def test_unknown_scheme_parameter_lists_providers(config_home: Path) -> None:
    with pytest.raises(quantcore.UnknownSchemeError) as info:
        quantcore.quantize(small_model(), "in8")
    message = str(info.value)
    assert "unknown dtype/scheme 'in8'" in message
    assert "from plugin 'int8' (distribution 'quantcore')" in message
    assert "from plugin 'fp16' (distribution 'quantcore')" in message
    assert "did you mean 'int8'?" in message
