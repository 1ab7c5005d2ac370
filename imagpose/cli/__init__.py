"""The ``imagpose`` command line: one entry point, one module per subcommand.

Errors the user can fix (:class:`~imagpose.errors.IMAGPoseError`) print one line and exit 2. Any other
exception is a bug: its traceback is shown with a request to report it, and the exit code is 1. Ctrl-C
exits 130; outputs are written atomically, so nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from ..errors import IMAGPoseError
from . import bench, convert, demo, env, export, generate, loadtest, parity, serve, train, verify

SUBCOMMANDS = (demo, generate, convert, verify, export, parity, bench, train, serve, loadtest, env)
BUG_REPORT = ("This is a bug in imagpose, not a problem with your input: please report it with the traceback "
              "above and the output of `imagpose env`.")


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
    except IMAGPoseError as exc:
        if os.environ.get("IMAGPOSE_DEBUG"):
            raise
        print(f"imagpose {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"imagpose {args.command}: interrupted; no partial output was written.", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(f"imagpose {args.command}: {BUG_REPORT}", file=sys.stderr)
        return 1
