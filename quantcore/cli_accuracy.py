"""The accuracy side of the command line: ``quantcore analyze`` and the options that give
``quantcore quantize`` a model to run (``--model``) and an accuracy budget (``--calibration``,
``--max-error``, ...)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

from torch import nn

from quantcore.errors import AccuracyError


def load_model_factory(reference: str) -> nn.Module:
    """The float model named by ``package.module:attribute``: a module, or a callable that takes
    no argument and returns one (imported and called: only name code you trust)."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise AccuracyError(
            f"--model {reference!r}: write it as package.module:attribute, where the attribute "
            "is an nn.Module or a function returning one"
        )
    if os.getcwd() not in sys.path:  # as `python -m` does: modules beside the caller import
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise AccuracyError(
            f"--model {reference!r}: cannot import {module_name!r} ({exc}); check the name and "
            "that it is on PYTHONPATH"
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise AccuracyError(f"--model {reference!r}: {module_name!r} has no {attribute!r}")
        target = getattr(target, part)
    model = target if isinstance(target, nn.Module) else target()
    if not isinstance(model, nn.Module):
        raise AccuracyError(
            f"--model {reference!r} gave {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def add_model_argument(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--model",
        metavar="MODULE:FACTORY",
        required=required,
        help="the float model: package.module:name of an nn.Module or of a function returning one",
    )


def add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    """``--calibration`` and the budget options of ``quantcore quantize``."""
    parser.add_argument(
        "--calibration",
        metavar="FILE",
        help="calibration inputs (torch.save of a tensor, tuple, dict, or a list of them, one per "
        "batch); needs --model",
    )
    parser.add_argument(
        "--max-error", type=float, metavar="E", help="accuracy budget on the outputs (see --metric)"
    )
    parser.add_argument(
        "--metric",
        dest="error_metric",
        choices=("relative_l2", "cosine"),
        help="what --max-error bounds: relative L2 error (default) or 1 - cosine",
    )
    parser.add_argument(
        "--fallback", metavar="SCHEME", help="scheme for layers kept back (default: float)"
    )
    parser.add_argument(
        "--smooth", action="store_true", default=None, help="SmoothQuant-style outlier smoothing"
    )
    parser.add_argument(
        "--smooth-alpha",
        type=float,
        metavar="A",
        help="migration strength of --smooth, in [0, 1] (default 0.5)",
    )


def model_input(args: argparse.Namespace) -> object:
    """What ``quantcore quantize`` quantizes: the checkpoint INPUT, or the --model it builds."""
    from quantcore.cli import UsageError

    if (args.input is None) == (args.model is None):
        raise UsageError("give a checkpoint INPUT or --model MODULE:FACTORY (one of them)")
    if args.model is None:
        return args.input
    model = load_model_factory(args.model)
    return model.eval()


def calibration_input(args: argparse.Namespace) -> object:
    """The --calibration inputs, read from their file, or None."""
    from quantcore.calibration import load_inputs

    return load_inputs(args.calibration) if args.calibration else None


def cmd_analyze(args: argparse.Namespace) -> int:
    from quantcore.api import quantize
    from quantcore.calibration import load_inputs
    from quantcore.compare import compare
    from quantcore.serialization import load

    model = load_model_factory(args.model)
    model.eval()
    inputs = load_inputs(args.inputs)
    if args.quantized:
        quantized: nn.Module = load(args.quantized, load_model_factory(args.model))
    else:
        quantized = quantize(model, args.dtype, config=args.config, output="module")
    result = compare(model, quantized, inputs)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.table(None if args.top == 0 else args.top))
    return 0


def add_analyze_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from quantcore.config import add_config_argument

    analyze = sub.add_parser(
        "analyze",
        help="measure a quantized model's error per output and per layer on sample inputs",
        description="Run the float model and its quantized copy on sample inputs and print the "
        "error of each output and of each quantized layer (relative L2, cosine, max abs), worst "
        "layers first. The quantized copy is read from --quantized, or made now with --dtype / "
        "--config.",
    )
    add_model_argument(analyze, required=True)
    analyze.add_argument(
        "--inputs",
        required=True,
        metavar="FILE",
        help="sample inputs: torch.save of a tensor, tuple, dict, or a list of them (one per batch)",
    )
    analyze.add_argument(
        "--quantized", metavar="FILE", help="a file written by quantcore for this model"
    )
    analyze.add_argument("--dtype", metavar="SCHEME", help="scheme when quantizing now")
    add_config_argument(analyze)
    analyze.add_argument(
        "--top", type=int, default=10, metavar="N", help="layers shown (0: all; default 10)"
    )
    analyze.add_argument("--json", action="store_true", help="machine-readable output")
    analyze.set_defaults(func=cmd_analyze)
