"""Error and message behaviour: mid-process failures, warnings through logging, unknown names,
and docs/errors.md documenting every public error type with a real message.

``python tests/test_errors.py`` prints the current example message of every error type, to
refresh docs/errors.md after a message changes.
"""

from __future__ import annotations

import io
import logging
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import quantcore

sys.path.insert(0, str(Path(__file__).parent))
from conftest import fingerprint

DOCS = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
EXAMPLE_DIR = "/home/me/project"  # temporary paths in example messages read as this


class Fragile(nn.Linear):
    """A layer whose (test) mapper fails half-way, after meddling with torch's global settings."""


class FailingMapperPlugin:
    @quantcore.plugin.hookimpl
    def quantcore_layer_mappers(self) -> Iterator[quantcore.plugin.LayerMapper]:
        def convert(module: nn.Module, ctx: quantcore.plugin.ConversionContext) -> nn.Module:
            ctx.quantize_weight(module.weight)  # type: ignore[arg-type]
            torch.set_num_threads(torch.get_num_threads() + 1)
            torch.set_default_dtype(torch.float64)
            torch.set_grad_enabled(not torch.is_grad_enabled())
            torch.rand(3)  # consumes the global random generator
            raise RuntimeError("simulated failure")

        yield quantcore.plugin.LayerMapper(
            name="fragile",
            layer_kind="linear",
            matches=lambda m: isinstance(m, Fragile),
            convert=convert,
            priority=1000,
        )


def fragile_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), Fragile(4, 4))


def with_unsupported() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.ConvTranspose1d(10, 8, 1), nn.Linear(8, 4))


# -- mid-process failure ---------------------------------------------------------------------


def test_mid_process_failure_names_layer_and_leaves_everything_as_it_was() -> None:
    manager = quantcore.create_plugin_manager()
    manager.register_plugin(FailingMapperPlugin(), "test-fragile")
    model = fragile_model()
    before = fingerprint(model)
    plugins_before = manager.list_name_plugin()
    threads, default_dtype, grad = (
        torch.get_num_threads(),
        torch.get_default_dtype(),
        torch.is_grad_enabled(),
    )
    rng = torch.random.get_rng_state()

    with pytest.raises(quantcore.LayerQuantizationError) as info:
        quantcore.quantize(model, plugin_manager=manager)

    error = info.value
    assert isinstance(error, quantcore.QuantcoreError)
    assert error.layer == "2" and error.layer_type == "Fragile"
    assert "layer '2' (Fragile)" in str(error) and "simulated failure" in str(error)
    assert "exclude=['2']" in str(error)
    assert isinstance(error.cause, RuntimeError)
    assert fingerprint(model) == before
    assert torch.get_num_threads() == threads
    assert torch.get_default_dtype() == default_dtype
    assert torch.is_grad_enabled() == grad
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert manager.list_name_plugin() == plugins_before
    # The suggested fix works: the rest quantizes.
    result = quantcore.quantize(model, plugin_manager=manager, exclude=["2"])
    assert [r.name for r in result.report.quantized] == ["0"]


def test_quantcore_errors_from_a_mapper_are_wrapped_with_the_layer_name() -> None:
    class BadObserverPlugin:
        @quantcore.plugin.hookimpl
        def quantcore_layer_mappers(self) -> Iterator[quantcore.plugin.LayerMapper]:
            def convert(module: nn.Module, ctx: quantcore.plugin.ConversionContext) -> nn.Module:
                ctx.registry.observer("missing")
                return module

            yield quantcore.plugin.LayerMapper(
                name="bad",
                layer_kind="linear",
                matches=lambda m: isinstance(m, Fragile),
                convert=convert,
                priority=1000,
            )

    manager = quantcore.create_plugin_manager()
    manager.register_plugin(BadObserverPlugin(), "test-bad")
    with pytest.raises(quantcore.LayerQuantizationError, match="layer '2'") as info:
        quantcore.quantize(fragile_model(), plugin_manager=manager)
    assert isinstance(info.value.cause, quantcore.UnknownObserverError)


# -- warnings through logging ----------------------------------------------------------------


def test_unsupported_layers_partial_quantization_reported_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        result = quantcore.quantize(with_unsupported())
    assert [r.name for r in result.report.quantized] == ["1"]
    skipped = result.report.skipped
    assert [(r.name, r.reason) for r in skipped] == [("0", "no mapper for ConvTranspose1d")]
    records = [r for r in caplog.records if r.name == "quantcore" and r.levelno == logging.WARNING]
    assert len(records) == 1
    assert "0 (no mapper for ConvTranspose1d)" in records[0].getMessage()


def test_caller_silences_warnings_with_logging_configuration(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("quantcore")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with caplog.at_level(logging.WARNING):
            result = quantcore.quantize(with_unsupported())
    finally:
        logger.setLevel(previous)
    assert result.report.skipped  # the work still happened
    assert not [r for r in caplog.records if r.name == "quantcore"]


def test_caller_redirects_warnings_with_a_handler(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("quantcore")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with caplog.at_level(logging.WARNING):
            quantcore.quantize(with_unsupported())
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert "no mapper for ConvTranspose1d" in stream.getvalue()
    assert not [r for r in caplog.records if r.name == "quantcore"]  # went only to the handler


def test_left_out_on_request_is_info_not_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="quantcore"):
        quantcore.quantize(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)), exclude=["1"])
    warnings_ = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not warnings_
    assert any("left in float as configured" in r.getMessage() for r in caplog.records)


# -- unknown names ---------------------------------------------------------------------------


def test_unknown_scheme_names_disabled_plugins() -> None:
    with pytest.raises(quantcore.UnknownSchemeError) as info:
        quantcore.quantize(nn.Linear(2, 2), "fp16", disable_plugins=["fp16"])
    message = str(info.value)
    assert "'int8' (aliases: qint8, dynamic_int8; from plugin 'int8'" in message
    assert "Plugins not loaded: 'fp16' (disabled)" in message


def test_unknown_scheme_suggests_alias() -> None:
    with pytest.raises(quantcore.UnknownSchemeError, match="did you mean 'float16'"):
        quantcore.quantize(nn.Linear(2, 2), "floa16")


# -- every public error type is documented with a real message -------------------------------


def _raised(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except BaseException as exc:
        return exc
    raise AssertionError("expected an exception")


def _plugin_load_error(strict: bool) -> quantcore.PluginLoadError:
    candidate = quantcore.plugin.PluginCandidate(
        "extra", "no_such_module_xyz", "quantcore-extra", "1.0"
    )
    return _raised(  # type: ignore[return-value]
        lambda: quantcore.create_plugin_manager(candidates=[candidate], strict=strict)
    )


def _plugin_load_warning(_: Path) -> Warning:
    candidate = quantcore.plugin.PluginCandidate(
        "extra", "no_such_module_xyz", "quantcore-extra", "1.0"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantcore.create_plugin_manager(candidates=[candidate])
    return caught[0].message  # type: ignore[return-value]


def _invalid_registration(_: Path) -> BaseException:
    class Wrong:
        @quantcore.plugin.hookimpl
        def quantcore_schemes(self) -> list[object]:
            return ["int8"]

    manager = quantcore.create_plugin_manager(load_entry_points=False, strict=True)
    manager.register_plugin(Wrong(), "wrong", distribution="wrong-dist")
    return _raised(manager.registry)


def _conflict(_: Path) -> BaseException:
    class Twin:
        @quantcore.plugin.hookimpl
        def quantcore_observers(self) -> Iterator[quantcore.plugin.Observer]:
            yield quantcore.plugin.Observer("minmax", compute=lambda t, **kw: None)  # type: ignore[arg-type,return-value]

    manager = quantcore.create_plugin_manager()
    manager.register_plugin(Twin(), "twin", distribution="twin-observers")
    return _raised(manager.registry)


def _config_file(tmp: Path, text: str) -> BaseException:
    path = tmp / "config.toml"
    path.write_text(text)
    return _raised(lambda: quantcore.config.effective_config(path))


def _layer_skipped(_: Path) -> BaseException:
    scheme = quantcore.create_plugin_manager().registry().scheme("fp16")
    spec = scheme.layer_specs["linear"].weight
    return _raised(lambda: scheme.quantize_weight(torch.tensor([[float("nan")]]), spec, None))


def _layer_quantization_error(_: Path) -> BaseException:
    manager = quantcore.create_plugin_manager()
    manager.register_plugin(FailingMapperPlugin(), "test-fragile")
    return _raised(lambda: quantcore.quantize(fragile_model(), plugin_manager=manager))


class _RunsCode:
    """Unpickling this would run code: the unsafe-checkpoint example must refuse it."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this must never run",))


def _checkpoint_error(tmp: Path) -> BaseException:
    return _raised(lambda: quantcore.quantize(tmp / "missing.pt"))


def _unsafe_checkpoint(tmp: Path) -> BaseException:
    path = tmp / "model.pt"
    torch.save({"weight": torch.zeros(2, 2), "payload": _RunsCode()}, path)
    return _raised(lambda: quantcore.quantize(path))


def _missing_dependency(tmp: Path) -> BaseException:
    import sys

    saved = sys.modules.get("safetensors")
    sys.modules["safetensors"] = None  # type: ignore[assignment]  # as if not installed
    (tmp / "model.safetensors").write_bytes(b"{}")
    try:
        return _raised(lambda: quantcore.quantize(tmp / "model.safetensors"))
    finally:
        if saved is None:
            del sys.modules["safetensors"]
        else:
            sys.modules["safetensors"] = saved


def _save_quantized(tmp: Path, version: int | None = None) -> Path:
    import json

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    path = tmp / "q.pt"
    quantcore.save(quantcore.quantize(model), path)
    if version is not None:
        content = torch.load(path, weights_only=True)
        meta = json.loads(content["metadata"]["quantcore"])
        meta["format_version"] = version
        content["metadata"]["quantcore"] = json.dumps(meta)
        torch.save(content, path)
    return path


def _incompatible_format(tmp: Path) -> BaseException:
    path = _save_quantized(tmp, version=999)
    return _raised(lambda: quantcore.read_quantized(path))


def _serialization_error(tmp: Path) -> BaseException:
    path = _save_quantized(tmp)
    skeleton = torch.nn.Sequential(torch.nn.Conv1d(4, 4, 1))
    return _raised(lambda: quantcore.load(path, skeleton))


EXAMPLES: dict[str, Callable[[Path], BaseException | Warning]] = {
    "AccuracyError": lambda _: _raised(
        lambda: quantcore.compare(nn.Linear(2, 2), nn.Linear(2, 2), 3)
    ),
    "CheckpointError": _checkpoint_error,
    "UnsafeCheckpointError": _unsafe_checkpoint,
    "MissingDependencyError": _missing_dependency,
    "IncompatibleFormatError": _incompatible_format,
    "SerializationError": _serialization_error,
    "PluginLoadError": lambda _: _plugin_load_error(strict=True),
    "PluginLoadWarning": _plugin_load_warning,
    "InvalidRegistrationError": _invalid_registration,
    "PluginConflictError": _conflict,
    "UnknownSchemeError": lambda _: _raised(lambda: quantcore.quantize(nn.Linear(2, 2), "in8")),
    "UnknownObserverError": lambda _: _raised(
        lambda: quantcore.create_plugin_manager().registry().observer("minmux")
    ),
    "UnsupportedInputError": lambda _: _raised(lambda: quantcore.quantize(42)),
    "NothingToQuantizeError": lambda _: _raised(
        lambda: quantcore.quantize(nn.Sequential(nn.ConvTranspose1d(4, 4, 1)), strict=True)
    ),
    "LayerSkipped": _layer_skipped,
    "LayerQuantizationError": _layer_quantization_error,
    "ConfigFileError": lambda tmp: _config_file(tmp, "exclude = [\n"),
    "UnknownConfigKeyError": lambda tmp: _config_file(tmp, 'dtyp = "int8"\n'),
    "ConfigTypeError": lambda tmp: _config_file(tmp, 'strict = "yes"\n'),
    "ConfigValueError": lambda tmp: _config_file(tmp, 'dtype = "in8"\n'),
}
BASE_CLASSES = {"QuantcoreError", "PluginError", "ConfigError", "QuantcoreWarning"}


def public_error_types() -> list[str]:
    """Every error class of quantcore.errors: users' (``quantcore``) and plugin authors'
    (``quantcore.plugin``, which has them all)."""
    return sorted(
        name
        for name in quantcore.errors.__all__
        if isinstance(getattr(quantcore.plugin, name), type)
        and issubclass(
            getattr(quantcore.plugin, name), (quantcore.QuantcoreError, quantcore.QuantcoreWarning)
        )
    )


def example_message(name: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        exc = EXAMPLES[name](Path(tmp))
        return str(exc).replace(str(Path(tmp).resolve()), EXAMPLE_DIR).replace(tmp, EXAMPLE_DIR)


def test_every_public_error_type_has_an_example_or_is_a_base() -> None:
    assert set(public_error_types()) == set(EXAMPLES) | BASE_CLASSES


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_raises_that_type(name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        assert type(EXAMPLES[name](Path(tmp))).__name__ == name


@pytest.mark.parametrize("name", public_error_types())
def test_error_type_documented_with_its_real_message(name: str) -> None:
    text = DOCS.read_text()
    assert re.search(rf"^### `{name}`", text, re.MULTILINE), f"docs/errors.md lacks ### `{name}`"
    if name in EXAMPLES:
        message = example_message(name)
        assert message in text, f"docs/errors.md example of {name} is stale; now:\n{message}"


if __name__ == "__main__":
    for error_name in sorted(EXAMPLES):
        print(f"### `{error_name}`\n\n```text\n{example_message(error_name)}\n```\n")
