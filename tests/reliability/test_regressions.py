"""One test per failure the reliability suites found (docs/reliability.md lists them)."""

from __future__ import annotations

from pathlib import Path

import torch
from quantcore_int8.quantization import (
    dequantize_weight,
    fake_quantize_activation,
    quantize_weight,
)

import quantcore
from quantcore.plugin import ActivationSpec, Granularity, WeightSpec

F32_MAX = torch.finfo(torch.float32).max


def _minmax() -> quantcore.plugin.Observer:
    return quantcore.create_plugin_manager().registry().observer("minmax")


def test_float32_max_weight_dequantizes_finite() -> None:
    """Found by test_int8_weight_round_trip_within_half_a_step: 127 * (max / 127) rounded past
    float32's limit and the weight dequantized to inf."""
    weight = torch.tensor([[F32_MAX, -F32_MAX / 3]])
    for symmetric in (True, False):
        restored = dequantize_weight(
            quantize_weight(weight, WeightSpec(symmetric=symmetric), _minmax())
        )
        assert bool(torch.isfinite(restored).all())
        assert float(restored[0, 0]) > F32_MAX * 0.99


def test_asymmetric_range_wider_than_float32_gets_a_finite_scale() -> None:
    """Found by test_int8_any_axis: (high - low) overflowed to inf for a row spanning
    [-8.8e37, 3.4e38]; the scale was inf and every value dequantized to 0 or NaN."""
    weight = torch.tensor([[3.4e38, -8.8e37, -3.0e38]])
    qw = quantize_weight(weight, WeightSpec(symmetric=False), _minmax())
    assert qw.scale is not None and bool(torch.isfinite(qw.scale).all())
    restored = dequantize_weight(qw)
    assert bool(
        ((restored - weight).abs() <= qw.scale * 0.5 * (1 + 1e-5) + weight.abs() * 2e-7).all()
    )

    x = torch.tensor([[-3.0e38, 3.0e38, 1.0]])
    restored_x = fake_quantize_activation(x, ActivationSpec(Granularity.PER_TOKEN, symmetric=False))
    assert not bool(restored_x.isnan().any())  # was NaN: (0 - zero_point) * inf
    assert bool(torch.isfinite(restored_x).all())


def test_float64_weight_beyond_float32_range_is_skipped_with_a_reason() -> None:
    """Found by test_int8_weight_round_trip_within_half_a_step: a float64 weight of 4.6e38 got an
    inf float32 scale and silently quantized to zeros."""
    import pytest

    weight = torch.tensor([[4.6e38, 1.0]], dtype=torch.float64)
    with pytest.raises(quantcore.plugin.LayerSkipped, match="float32 range"):
        quantize_weight(weight, WeightSpec(), _minmax())
    model = torch.nn.Linear(2, 1).double()
    with torch.no_grad():
        model.weight.copy_(weight)
    report = quantcore.quantize(model).report
    assert report.skipped[0].reason and "float32 range" in report.skipped[0].reason


# -- found by the input fuzzers (test_fuzz_inputs.py) and the security tests ---------------------


def test_path_too_long_or_with_nul_is_a_quantcore_error() -> None:
    """Path.exists() raised OSError (name too long) or ValueError (NUL byte) out of the file
    adapter's accepts()."""
    import pytest

    for text in ("x" * 5000, "x" * 5000 + ".pt", "a\x00b.pt"):
        with pytest.raises(quantcore.QuantcoreError):
            quantcore.quantize(text)


def test_an_adapter_that_raises_is_reported_not_propagated() -> None:
    import pytest

    class Clumsy:
        @quantcore.plugin.hookimpl
        def quantcore_input_adapters(self):  # type: ignore[no-untyped-def]
            yield quantcore.plugin.InputAdapter(
                "looks",
                accepts=lambda o: 1 / 0 > 0,
                adapt=lambda o: None,
                priority=10**6,  # type: ignore[arg-type,return-value]
            )
            yield quantcore.plugin.InputAdapter(
                "grabs",
                accepts=lambda o: isinstance(o, int),
                adapt=lambda o: [][1],
                priority=10**5,  # type: ignore[arg-type,return-value]
            )

    manager = quantcore.create_plugin_manager()
    manager.register_plugin(Clumsy(), "clumsy", distribution="clumsy-dist")
    with pytest.raises(quantcore.UnsupportedInputError) as info:
        quantcore.quantize(3, plugin_manager=manager)
    message = str(info.value)
    assert "ZeroDivisionError" in message and "'grabs'" in message and "IndexError" in message
    assert "clumsy-dist" in message
    assert (
        len(quantcore.quantize(torch.nn.Linear(2, 2), plugin_manager=manager).report.quantized) == 1
    )


def test_shard_name_with_nul_byte_is_refused(tmp_path: Path) -> None:
    import json

    import pytest

    torch.save({"fc.weight": torch.ones(2, 2)}, tmp_path / "a.pt")
    index = tmp_path / "model.index.json"
    index.write_text(json.dumps({"weight_map": {"fc.weight": "a\x00.pt"}}))
    with pytest.raises(quantcore.CheckpointError, match="not a usable file name"):
        quantcore.quantize(index)


def test_writing_to_an_unusable_path_is_a_serialization_error(tmp_path: Path) -> None:
    import pytest

    result = quantcore.quantize(torch.nn.Linear(2, 2))
    (tmp_path / "file.pt").write_bytes(b"")
    for target in (tmp_path, tmp_path / "file.pt" / "under.pt", ""):
        with pytest.raises(quantcore.SerializationError):
            quantcore.save(result, target)


def _saved(tmp_path: Path) -> tuple[Path, dict]:  # type: ignore[type-arg]
    path = tmp_path / "q.pt"
    quantcore.save(quantcore.quantize(torch.nn.Sequential(torch.nn.Linear(4, 4))), path)
    return path, torch.load(path, weights_only=True)


def test_file_with_a_wrong_dtype_or_non_finite_scale_is_refused(tmp_path: Path) -> None:
    """load() used to assign a float tensor where int8 values belong (and NaN scales), so the
    model ran with garbage weights."""
    import pytest

    path, blob = _saved(tmp_path)
    blob["state_dict"]["0.weight"] = blob["state_dict"]["0.weight"].float()
    torch.save(blob, path)
    with pytest.raises(quantcore.SerializationError, match=r"metadata records torch\.int8"):
        quantcore.load(path, torch.nn.Sequential(torch.nn.Linear(4, 4)))
    path, blob = _saved(tmp_path)
    blob["state_dict"]["0.weight_scale"][1] = float("nan")
    torch.save(blob, path)
    with pytest.raises(quantcore.SerializationError, match="NaN or Inf"):
        quantcore.load(path, torch.nn.Sequential(torch.nn.Linear(4, 4)))


def test_manifest_dtype_names_import_nothing(tmp_path: Path) -> None:
    """Manifest dtypes were looked up with getattr(torch, name): '_dynamo' imported torch._dynamo."""
    import json
    import subprocess
    import sys

    import pytest

    path, blob = _saved(tmp_path)
    meta = json.loads(blob["metadata"]["quantcore"])
    meta["layers"][0]["weights"][0]["tensors"]["data"]["dtype"] = "_dynamo"
    blob["metadata"]["quantcore"] = json.dumps(meta)
    torch.save(blob, path)
    with pytest.raises(quantcore.SerializationError, match="unknown dtype '_dynamo'"):
        quantcore.read_quantized(path)
    code = (
        "import sys, quantcore\n"
        f"try: quantcore.read_quantized({str(path)!r})\n"
        "except quantcore.SerializationError: pass\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_deterministic_flag_and_default_device_are_restored() -> None:
    """preserved_global_state() restored threads, dtype, grad mode and RNG, not these two."""
    import pytest

    class Meddler:
        @quantcore.plugin.hookimpl
        def quantcore_layer_mappers(self):  # type: ignore[no-untyped-def]
            def convert(module, ctx):  # type: ignore[no-untyped-def]
                torch.use_deterministic_algorithms(True, warn_only=True)
                torch.set_default_device("meta")
                raise RuntimeError("simulated")

            yield quantcore.plugin.LayerMapper(
                "meddler", "linear", matches=lambda m: True, convert=convert, priority=10**6
            )

    manager = quantcore.create_plugin_manager()
    manager.register_plugin(Meddler(), "meddler")
    deterministic = torch.are_deterministic_algorithms_enabled()
    with pytest.raises(quantcore.LayerQuantizationError):
        quantcore.quantize(torch.nn.Linear(2, 2), plugin_manager=manager)
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.get_default_device() == torch.device("cpu")
    assert torch.empty(1).device.type == "cpu"


def test_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """Found by test_cli_subprocess: tomllib raised UnicodeDecodeError out of quantize()."""
    import pytest

    path = tmp_path / "config.toml"
    path.write_bytes(b'dtype = "int8"\n\x80\xff')
    with pytest.raises(quantcore.ConfigFileError, match="not UTF-8"):
        quantcore.quantize(torch.nn.Linear(2, 2), config=path)
