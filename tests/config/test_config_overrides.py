"""Include patterns and per-layer overrides (by name: glob or regex; by type: class or kind)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cfg_helpers import small_model, write_user_config
from torch import nn

import quantcore


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.out = nn.Linear(8, 8)


def two_blocks() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Module()
    model.enc = Block()
    model.dec = Block()
    return model


def lines(result: quantcore.QuantizationResult) -> dict[str, quantcore.LayerReport]:
    return {r.name: r for r in result.report.layers}


def test_override_dtype_by_glob_changes_scheme_of_that_layer_only(config_home: Path) -> None:
    result = quantcore.quantize(two_blocks(), overrides=[{"match": "enc.*", "dtype": "fp16"}])
    report = lines(result)
    assert report["enc.fc"].scheme == report["enc.out"].scheme == "fp16"
    assert report["dec.fc"].scheme == report["dec.out"].scheme == "int8"
    assert result.state_dict["enc.fc.weight"].dtype == torch.float16
    assert result.state_dict["dec.fc.weight"].dtype == torch.int8
    assert report["enc.fc"].override == "overrides[0] (match 'enc.*'): dtype=fp16"
    assert report["dec.fc"].override is None
    assert "[overrides[0] (match 'enc.*'): dtype=fp16]" in str(result.report)


def test_override_by_regex_and_parent_name(config_home: Path) -> None:
    result = quantcore.quantize(
        two_blocks(),
        overrides=[
            {"match": r"re:(enc|dec)\.out", "skip": True},
            {"match": "dec", "dtype": "fp16"},
        ],
    )
    report = lines(result)
    assert report["enc.out"].status == report["dec.out"].status == "skipped"
    assert (
        report["enc.out"].reason is not None
        and "skipped by override overrides[0]" in report["enc.out"].reason
    )
    assert report["dec.fc"].scheme == "fp16"  # "dec" covers everything inside dec
    assert report["enc.fc"].scheme == "int8"


def test_override_granularity_symmetric_by_layer_type(config_home: Path) -> None:
    for layer_type in ("Linear", "torch.nn.modules.linear.Linear", "linear", "Lin*"):
        result = quantcore.quantize(
            two_blocks(),
            overrides=[{"layer_type": layer_type, "granularity": "per_tensor", "symmetric": False}],
        )
        sd = result.state_dict
        assert sd["enc.fc.weight_scale"].numel() == 1, layer_type
        assert "enc.fc.weight_zero_point" in sd, layer_type
        assert lines(result)["enc.fc"].granularity is not None
        assert "per_tensor, asymmetric" in str(lines(result)["enc.fc"].granularity)
    default = quantcore.quantize(two_blocks()).state_dict
    assert default["enc.fc.weight_scale"].numel() == 8
    assert "enc.fc.weight_zero_point" not in default


def test_type_that_matches_nothing_leaves_layers_alone(config_home: Path) -> None:
    result = quantcore.quantize(two_blocks(), overrides=[{"layer_type": "Conv2d", "skip": True}])
    assert len(result.report.quantized) == 4


@pytest.fixture
def manager_with_halving_observer() -> Iterator[quantcore.QuantcorePluginManager]:
    """The installed plugins plus an observer that doubles minmax's scale (so halves resolution)."""

    class HalvingObserver:
        @quantcore.plugin.hookimpl
        def quantcore_observers(self) -> Iterator[quantcore.plugin.Observer]:
            from quantcore_observers import minmax

            def doubled(tensor: torch.Tensor, **kw: object) -> quantcore.plugin.QuantParams:
                p = minmax(tensor, **kw)  # type: ignore[arg-type]
                return quantcore.plugin.QuantParams(p.scale * 2, p.zero_point, p.qmin, p.qmax)

            yield quantcore.plugin.Observer(name="doubled", compute=doubled)

    manager = quantcore.create_plugin_manager()
    manager.register_plugin(HalvingObserver(), "test-doubled")
    yield manager


def test_override_observer(
    config_home: Path, manager_with_halving_observer: quantcore.QuantcorePluginManager
) -> None:
    model = two_blocks()
    base = quantcore.quantize(model, plugin_manager=manager_with_halving_observer).state_dict
    result = quantcore.quantize(
        model,
        plugin_manager=manager_with_halving_observer,
        overrides=[{"match": "enc.fc", "observer": "doubled"}],
    )
    assert torch.allclose(result.state_dict["enc.fc.weight_scale"], base["enc.fc.weight_scale"] * 2)
    assert torch.equal(result.state_dict["dec.fc.weight_scale"], base["dec.fc.weight_scale"])


def test_later_override_wins_and_skip_can_be_cancelled(config_home: Path) -> None:
    result = quantcore.quantize(
        two_blocks(),
        overrides=[
            {"match": "*", "skip": True},
            {"match": "enc.*", "skip": False, "dtype": "fp16"},
            {"match": "enc.out", "dtype": "int8"},
        ],
    )
    report = lines(result)
    assert report["dec.fc"].status == "skipped" and report["dec.fc"].requested
    assert report["enc.fc"].scheme == "fp16"
    assert report["enc.out"].scheme == "int8"
    assert report["enc.out"].override is not None
    assert report["enc.out"].override.count("overrides[") == 3  # all three applied, in order


def test_weight_settings_on_unscaled_scheme_are_noted(config_home: Path) -> None:
    result = quantcore.quantize(
        two_blocks(), "fp16", overrides=[{"match": "enc.fc", "granularity": "per_tensor"}]
    )
    line = lines(result)["enc.fc"]
    assert line.status == "quantized" and line.scheme == "fp16"
    assert any("granularity ignored" in note for note in line.notes)


def test_include_quantizes_only_matching_layers(config_home: Path) -> None:
    result = quantcore.quantize(two_blocks(), include=["enc"], exclude=["enc.out"])
    report = lines(result)
    assert report["enc.fc"].status == "quantized"
    assert report["enc.out"].status == "skipped"
    assert report["enc.out"].reason == "excluded by pattern 'enc.out'"
    assert report["dec.fc"].status == "skipped"
    assert report["dec.fc"].reason == "not included by include patterns ['enc']"
    assert report["dec.fc"].requested


def test_overrides_and_include_apply_to_state_dicts(config_home: Path) -> None:
    state_dict = two_blocks().state_dict()
    result = quantcore.quantize(
        state_dict, include=["re:enc\\..*"], overrides=[{"layer_type": "linear", "dtype": "fp16"}]
    )
    report = lines(result)
    assert report["enc.fc"].scheme == "fp16"
    assert report["dec.fc"].status == "skipped" and "not included" in str(report["dec.fc"].reason)
    assert result.state_dict["enc.fc.weight"].dtype == torch.float16
    assert result.state_dict["dec.fc.weight"].dtype == torch.float32


def test_overrides_from_file(config_home: Path) -> None:
    path = write_user_config(
        config_home,
        '[[overrides]]\nmatch = "2"\ndtype = "fp16"\n\n[[overrides]]\nmatch = "0"\nskip = true\n',
    )
    result = quantcore.quantize(small_model())
    report = lines(result)
    assert report["2"].scheme == "fp16" and report["0"].status == "skipped"
    assert result.report.config is not None
    assert all(o.source == f"file {path}" for o in result.report.config.overrides)


def test_unmatched_pattern_warns_or_fails_in_strict_mode(
    config_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="quantcore"):
        result = quantcore.quantize(two_blocks(), exclude=["enc.fcc"])
    assert len(result.report.quantized) == 4
    assert any("'enc.fcc' matches no layer" in r.getMessage() for r in caplog.records)
    with pytest.raises(quantcore.ConfigValueError, match=r"did you mean 'enc\.fc'"):
        quantcore.quantize(
            two_blocks(), overrides=[{"match": "enc.fcc", "skip": True}], strict=True
        )


def test_strict_with_nothing_quantized(config_home: Path) -> None:
    with pytest.raises(quantcore.NothingToQuantizeError, match="nothing was quantized"):
        quantcore.quantize(nn.Sequential(nn.ConvTranspose1d(4, 4, 1)), strict=True)
    report = quantcore.quantize(nn.Sequential(nn.ConvTranspose1d(4, 4, 1))).report
    assert not report.quantized
