"""The ``quantcore`` command line. Each sub-command is a small function over the public API."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from quantcore.errors import QuantcoreError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def _cmd_demo(args: argparse.Namespace) -> int:
    from quantcore.demo import run_demo

    # The report printed below lists skipped layers; the log would say the same again.
    logger = logging.getLogger("quantcore")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        print(run_demo(tuple(args.dtype) if args.dtype else ("int8", "fp16")))
    finally:
        logger.setLevel(level)
    return EXIT_OK


def _cmd_plugins(args: argparse.Namespace) -> int:
    from quantcore.api import list_plugins

    infos = list_plugins()
    if args.json:
        print(json.dumps([info.to_dict() for info in infos], indent=2))
        return EXIT_OK
    if not infos:
        print("no quantcore plugins found (entry-point group 'quantcore.plugins')")
    for info in infos:
        origin = f"{info.distribution} {info.version}".strip()
        print(f"{info.name:<12} {info.status:<8} {origin}")
        for kind, names in info.provides.items():
            print(f"    {kind}: {', '.join(names)}")
        if info.error:
            print(f"    error: {info.error}")
    return EXIT_OK


def _cmd_config_show(args: argparse.Namespace) -> int:
    from quantcore.config import effective_config

    config = effective_config(args.config)
    if args.json:
        print(json.dumps(config.to_dict(), indent=2))
    else:
        print(config.describe())
    return EXIT_OK


def add_config_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``quantcore config show``: the effective configuration and where each value came from."""
    from quantcore.config import add_config_argument

    config = sub.add_parser("config", help="show the effective configuration and its sources")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_sub.add_parser(
        "show", help="print every setting, its value and where it came from; checks the files"
    )
    add_config_argument(show)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=_cmd_config_show)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantcore", description="Dynamic INT8/FP16 quantization for PyTorch models."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser("demo", help="quantize an embedded default model and print the report")
    demo.add_argument(
        "--dtype", action="append", help="scheme to run (repeatable; default int8 and fp16)"
    )
    demo.set_defaults(func=_cmd_demo)

    plugins = sub.add_parser("plugins", help="list plugins, what they provide, and load failures")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(func=_cmd_plugins)

    add_config_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="quantcore: %(levelname)s: %(message)s", level=logging.WARNING)
    try:
        return int(args.func(args))
    except QuantcoreError as exc:
        print(f"quantcore: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
