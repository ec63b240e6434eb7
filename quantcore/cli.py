"""The ``quantcore`` command line. Each sub-command is a small function over the public API."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from quantcore.errors import QuantcoreError
from quantcore.settings import QuantizeSettings

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
        print(run_demo(tuple(args.dtype) if args.dtype else None))
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


class _Progress:
    """Per-layer / per-shard progress on stderr: one updating line on a terminal, otherwise a
    line every 10% of layers and one per shard. Small models (under 20 layers) show nothing."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.shard = ""
        self._last = -1

    def layer(self, done: int, total: int, name: str) -> None:
        if self.quiet or total < 20:
            return
        step = max(1, total // 10)
        prefix = f"{self.shard} " if self.shard else ""
        if self.tty:
            end = "\n" if done == total else ""
            print(f"\r\x1b[K{prefix}[{done}/{total}] {name}", end=end, file=sys.stderr, flush=True)
        elif done == total or done % step == 0:
            print(f"{prefix}[{done}/{total}] {name}".rstrip(), file=sys.stderr, flush=True)

    def shards(self, index: int, total: int, name: str) -> None:
        if self.quiet:
            return
        if index < total:
            self.shard = f"shard {index + 1}/{total}"
            print(f"quantizing {self.shard}: {name}", file=sys.stderr, flush=True)
        else:
            self.shard = ""


def _override(text: str) -> dict[str, object]:
    """``match=lm_head,skip=true`` -> ``{"match": "lm_head", "skip": True}`` (``true``/``false``
    are booleans, digits integers, anything else a string)."""
    table: dict[str, object] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(
                f"{text!r}: write KEY=VALUE pairs separated by commas, e.g. match=lm_head,skip=true"
            )
        word = value.strip()
        parsed: object = {"true": True, "false": False}.get(word.lower(), word)
        table[key.strip()] = int(word) if word.isdigit() else parsed
    return table


def _settings(args: argparse.Namespace) -> QuantizeSettings:
    """The command line's settings, as quantize() and quantize_to_file() take them."""
    return QuantizeSettings(
        dtype=args.dtype,
        include=args.include,
        exclude=args.exclude,
        overrides=args.overrides,
        disable_plugins=args.disable_plugins,
        strict=args.strict,
        log_level=args.log_level,
        max_error=args.max_error,
        error_metric=args.error_metric,
        fallback=args.fallback,
        smooth=args.smooth,
        smooth_alpha=args.smooth_alpha,
        fuse_activations=args.fuse_activations,
    )


def _cmd_quantize(args: argparse.Namespace) -> int:
    from quantcore.cli_accuracy import calibration_input, model_input
    from quantcore.serialization import quantize_to_file

    progress = _Progress(args.quiet)
    report, written = quantize_to_file(
        model_input(args),
        args.output,
        **_settings(args).kwargs(),
        config=args.config,
        progress=progress.layer,
        shard_progress=progress.shards,
        calibration=calibration_input(args),
    )
    print(report)
    for path in written:
        print(f"wrote {path}")
    return EXIT_OK


EXPORTER_GROUP = "quantcore.exporters"  # entry points: format name -> export function


def _cmd_export(args: argparse.Namespace) -> int:
    from importlib_metadata import entry_points

    from quantcore.errors import MissingDependencyError

    found = {ep.name: ep for ep in entry_points(group=EXPORTER_GROUP)}
    entry = found.get(args.format)
    if entry is None:
        raise UsageError(
            f"no exporter for format {args.format!r} is installed (installed: "
            f"{', '.join(sorted(found)) or 'none'})"
        )
    try:
        export = entry.load()
    except ImportError as exc:
        raise MissingDependencyError(
            f"exporting to {args.format}", "transformers", "transformers"
        ) from exc
    written = export(
        args.model,
        args.output,
        format=args.format,
        dtype=args.dtype,
        include=args.include,
        exclude=args.exclude,
    )
    for path in written:
        print(f"wrote {path}")
    return EXIT_OK


def add_export_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = sub.add_parser(
        "export",
        help="write a Hugging Face model folder in a format serving engines load",
        description="Quantize a Hugging Face model folder (config.json + safetensors) and write "
        "it as a folder that loads as it is: compressed-tensors (INT8 W8A8, for vLLM, SGLang "
        "and transformers) or hf (fp16: a plain float16 checkpoint; int8: a quantcore folder "
        "for transformers' from_pretrained).",
    )
    export.add_argument("model", metavar="MODEL", help="Hugging Face model folder")
    export.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to write")
    export.add_argument(
        "--format", required=True, choices=("compressed-tensors", "hf"), help="output format"
    )
    export.add_argument("--dtype", default=None, metavar="SCHEME", help="int8 (default) or fp16")
    export.add_argument("--include", action="append", metavar="PATTERN", help="layers to quantize")
    export.add_argument("--exclude", action="append", metavar="PATTERN", help="layers kept float")
    export.set_defaults(func=_cmd_export)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from quantcore.assemble import tensor_bytes
    from quantcore.serialization import read_quantized

    qfile = read_quantized(args.file)
    manifest = qfile.manifest
    quantized_keys: set[str] = set()
    layers = []
    for layer in manifest.layers:
        prefix = f"{layer.name}." if layer.name else ""
        keys = [k for k in qfile.state_dict if k.startswith(prefix)]
        quantized_keys.update(keys)
        layers.append((layer, tensor_bytes(qfile.state_dict[k] for k in keys)))
    float_keys = [k for k in qfile.state_dict if k not in quantized_keys]
    total = tensor_bytes(qfile.state_dict.values())
    float_bytes = tensor_bytes(qfile.state_dict[k] for k in float_keys)
    if args.json:
        print(
            json.dumps(
                {
                    "path": str(qfile.path),
                    "shards": [str(p) for p in qfile.shards],
                    "format_version": manifest.format_version,
                    "quantcore_version": manifest.quantcore_version,
                    "scheme": manifest.scheme,
                    "layers": [
                        {
                            "name": layer.name,
                            "layer_kind": layer.layer_kind,
                            "layer_type": layer.layer_type,
                            "scheme": layer.scheme,
                            "weight_format": layer.weight_format,
                            "granularity": layer.spec.describe(),
                            "mapper": layer.mapper,
                            "bytes": nbytes,
                        }
                        for layer, nbytes in layers
                    ],
                    "float_tensors": len(float_keys),
                    "float_bytes": float_bytes,
                    "total_bytes": total,
                },
                indent=2,
            )
        )
        return EXIT_OK
    shards = f" ({len(qfile.shards)} shards)" if qfile.shards else ""
    print(
        f"{qfile.path}{shards}: quantcore file format {manifest.format_version}, written by "
        f"quantcore {manifest.quantcore_version}, scheme {manifest.scheme}"
    )
    width = max((len(layer.name) for layer, _ in layers), default=4)
    for layer, nbytes in layers:
        print(
            f"  {layer.name or '<root>':<{width}}  {layer.layer_kind:<10} {layer.weight_format:<6} "
            f"{_size(nbytes):>10}  {layer.spec.describe()}"
        )
    print(
        f"  {len(layers)} quantized layer(s), {len(float_keys)} float tensor(s) "
        f"({_size(float_bytes)}); total {_size(total)}"
    )
    return EXIT_OK


def _size(nbytes: int) -> str:
    if nbytes < 2**20:
        return f"{nbytes / 2**10:.1f} KiB"
    return f"{nbytes / 2**20:.2f} MiB"


class UsageError(Exception):
    """A command-line usage problem found after parsing (exit code 2)."""


def add_setting_options(parser: argparse.ArgumentParser) -> None:
    """An option for every field of QuantizeSettings; ``_settings(args)`` reads them back."""
    parser.add_argument(
        "--dtype",
        default=None,
        metavar="SCHEME",
        help="quantization scheme: a name or alias a plugin provides (built in: int8, the "
        "default unless a configuration file says otherwise, and fp16)",
    )
    parser.add_argument(
        "--include",
        action="append",
        metavar="PATTERN",
        help="quantize only layers matching this glob or re:REGEX (repeatable)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        metavar="PATTERN",
        help="glob of layer names to keep in float (repeatable), e.g. 'lm_head' or 'encoder.*'",
    )
    parser.add_argument(
        "--override",
        dest="overrides",
        action="append",
        type=_override,
        metavar="KEY=VALUE,...",
        help="per-layer rule (repeatable, applied in order), e.g. 'match=lm_head,skip=true' or "
        "'layer_type=Embedding,dtype=fp16'; keys as in a configuration file's [[overrides]]",
    )
    parser.add_argument(
        "--disable-plugin",
        dest="disable_plugins",
        action="append",
        metavar="NAME",
        help="plugin (entry-point) or distribution name not to load (repeatable)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="third-party plugin failures, patterns matching no layer, and an empty result are "
        "errors",
    )
    parser.add_argument(
        "--fuse-activations",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the GELU/ReLU/SiLU that directly follows a quantized linear layer in its kernel "
        "(default: on)",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        metavar="LEVEL",
        help="level of the quantcore logger: DEBUG, INFO, WARNING (default), ERROR, CRITICAL",
    )


def _add_quantize_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``quantcore quantize``: an option for every setting of QuantizeSettings (a test checks)."""
    from quantcore.cli_accuracy import add_budget_arguments, add_model_argument
    from quantcore.config import add_config_argument

    quantize = sub.add_parser(
        "quantize",
        help="quantize a checkpoint file and write the quantized model",
        description="Quantize a checkpoint (.pt/.pth/.bin/.safetensors, a *.index.json shard "
        "index, or a folder holding one) and write a quantcore file; print the report. A sharded "
        "input is quantized shard by shard and written sharded, with its own index. Load the "
        "output with quantcore.load(OUTPUT, skeleton).",
    )
    quantize.add_argument(
        "input",
        metavar="INPUT",
        nargs="?",
        help="checkpoint file, shard index or folder (or --model instead)",
    )
    quantize.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUTPUT",
        help="file to write: .safetensors (needs the safetensors extra) or .pt",
    )
    add_setting_options(quantize)
    add_config_argument(quantize)
    add_model_argument(quantize, required=False)
    add_budget_arguments(quantize)
    quantize.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    quantize.set_defaults(func=_cmd_quantize)


def build_parser() -> argparse.ArgumentParser:
    from quantcore.cli_accuracy import add_analyze_command

    parser = argparse.ArgumentParser(
        prog="quantcore", description="Dynamic INT8/FP16 quantization for PyTorch models."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser("demo", help="quantize an embedded default model and print the report")
    demo.add_argument(
        "--dtype", action="append", help="scheme to run (repeatable; default: every loaded scheme)"
    )
    demo.set_defaults(func=_cmd_demo)

    plugins = sub.add_parser("plugins", help="list plugins, what they provide, and load failures")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(func=_cmd_plugins)

    add_config_command(sub)
    add_analyze_command(sub)
    add_export_command(sub)

    _add_quantize_command(sub)

    inspect = sub.add_parser(
        "inspect",
        help="show what a quantized file holds (layers, schemes, sizes)",
        description="Show the layers, schemes and sizes a quantcore file (or shard index) holds.",
    )
    inspect.add_argument("file", metavar="FILE", help="a file written by quantcore, or its index")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(func=_cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="quantcore: %(levelname)s: %(message)s", level=logging.WARNING)
    try:
        return int(args.func(args))
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"quantcore: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except QuantcoreError as exc:
        print(f"quantcore: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("quantcore: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
