"""The ``efnas`` command line: one parser, subcommands contributed by each package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from latency_lut import cli as lut_cli
from nas import _demo_cli as demo_cli
from nas import _export_cli as export_cli
from nas import _search_cli as search_cli
from supernet import _report_cli as report_cli
from supernet import cli as supernet_cli
from supernet.errors import EfnasError
from supernet.io import tool_version

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
efficientformer-nas: hardware-aware architecture search for EfficientFormer-style vision models.

Train one weight-sharing supernet, measure a latency table on your device, search for the most
accurate architecture under a latency budget, and export it to PyTorch, TorchScript, ONNX and
Core ML. Run `efnas COMMAND --help` for the details of each command.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="efnas",
        description=DESCRIPTION,
        formatter_class=supernet_cli.DocFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {tool_version()}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    demo_cli.register(subparsers)
    supernet_cli.register(subparsers)
    report_cli.register(subparsers)
    lut_cli.register(subparsers)
    search_cli.register_search(subparsers)
    search_cli.register_batch(subparsers)
    export_cli.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EfnasError as exc:
        print(f"efnas: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("efnas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
