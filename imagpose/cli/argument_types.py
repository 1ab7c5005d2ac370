"""argparse types shared by every subcommand: numbers are checked while the command line is parsed, so a value out of
range stops the command with one line naming the flag, before any model or data is read."""

from __future__ import annotations

import argparse
import math

from ..errors import InvalidArgumentError
from ..loading import resolve_model
from ..seeds import check_seed


def integer(minimum: int, multiple_of: int = 1):
    """argparse type: an integer >= ``minimum`` (and a multiple of ``multiple_of``)."""
    need = f"an integer >= {minimum}" + (f" and a multiple of {multiple_of}" if multiple_of > 1 else "")

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or value % multiple_of:
            raise argparse.ArgumentTypeError(f"expected {need}, got {text!r}")
        return value

    return convert


def number(low: float, high: float | None = None, *, low_inclusive: bool = True, high_inclusive: bool = True):
    """argparse type: a finite number in the interval from ``low`` to ``high`` (None: unbounded above)."""
    if high is None:
        need = f"a number {'>=' if low_inclusive else '>'} {low:g}"
    else:
        need = f"a number in {'[' if low_inclusive else '('}{low:g}, {high:g}{']' if high_inclusive else ')'}"

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        inside = math.isfinite(value) and (value >= low if low_inclusive else value > low) and (
            high is None or (value <= high if high_inclusive else value < high))
        if not inside:
            raise argparse.ArgumentTypeError(f"expected {need}, got {text!r}")
        return value

    return convert


def seed(text: str) -> int:
    """argparse type: a seed by :func:`imagpose.seeds.check_seed`'s rule."""
    try:
        return check_seed(int(text))
    except (ValueError, InvalidArgumentError):
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**63 - 1], got {text!r}") from None


def block_counts(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated block counts, each an integer >= 0 (``0,1,3,3``)."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0 such as 0,1,3,3, got {text!r}")
    return counts


def model_folder(text: str) -> str:
    """argparse type of ``--model``: a pipeline folder, or the name of a shipped model (its folder is returned)."""
    return str(resolve_model(text))
