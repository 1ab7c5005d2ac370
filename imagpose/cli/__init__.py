"""The ``imagpose`` command line: one entry point, one module per subcommand."""

from __future__ import annotations

import argparse
import os
import sys

from . import bench, convert, demo, env, export, generate, parity, verify

SUBCOMMANDS = (demo, generate, convert, verify, export, parity, bench, env)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagpose",
        description="IMAGPose (NeurIPS 2024) reference implementation and deployment toolkit.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        child = sub.add_parser(module.NAME, help=module.HELP, description=module.__doc__,
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(child)
        child.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError, TypeError, ImportError, RuntimeError) as exc:
        if os.environ.get("IMAGPOSE_DEBUG"):
            raise
        print(f"imagpose {args.command}: error: {exc}", file=sys.stderr)
        return 2
