"""The `mobilenet` command line: it parses, calls the library, and prints. Nothing else lives here.

Usage and input errors end with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from mobilenet.models.layers import check_num_classes, check_width

EXIT_USAGE = 2


class UsageError(Exception):
    """Raised by the parser instead of exiting, so that every error is printed the same way."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        raise UsageError(f"{self.prog}: error: {message}")


def _argtype(check: Callable, convert: Callable) -> Callable:
    """An argparse type that converts a string, then validates it with the library's own check."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = text
        try:
            return check(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def _positive_int(name: str) -> Callable:
    def check(value):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
        return value

    return _argtype(check, int)


width_arg = _argtype(check_width, float)
classes_arg = _argtype(check_num_classes, int)
resolution_arg = _positive_int("resolution")


def cmd_models(args: argparse.Namespace) -> int:
    from mobilenet.models import MODELS

    for name in sorted(MODELS):
        doc = (MODELS[name].__doc__ or "").strip().splitlines()[0]
        print(f"{name:<20} {doc}")
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    from mobilenet.cost import cost

    report = cost(args.model, args.resolution, width_mult=args.width, num_classes=args.num_classes,
                  small_input=args.small_input)
    print(json.dumps(report.to_dict()) if args.json else report.format())
    return 0


def cmd_tables(args: argparse.Namespace) -> int:
    from mobilenet.paper import comparison_tables

    print(comparison_tables())
    return 0


def build_parser() -> Parser:
    parser = Parser(prog="mobilenet", description="MobileNet V1 and V2: models, cost, training, export.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(run=cmd_models)

    p = sub.add_parser("cost", help="per-layer mult-adds and parameters of a model")
    p.add_argument("model", help="a model name (see `mobilenet models`)")
    p.add_argument("--width", type=width_arg, default=1.0, help="width multiplier alpha in (0, 4] (default 1)")
    p.add_argument("--resolution", type=resolution_arg, default=224, help="input side in pixels (default 224)")
    p.add_argument("--num-classes", type=classes_arg, default=1000, help="classifier outputs (default 1000)")
    p.add_argument("--small-input", action="store_true", help="the 32x32 (CIFAR) variant: less early down-sampling")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_cost)

    p = sub.add_parser("tables", help="the papers' cost tables side by side with ours")
    p.set_defaults(run=cmd_tables)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except UsageError as error:
        print(error, file=sys.stderr)
    except (ValueError, OSError) as error:
        print(f"mobilenet: error: {error}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
