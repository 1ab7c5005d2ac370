"""argparse types shared by every subcommand: numbers are checked while the command line is parsed, so a value out of
range stops the command with one line naming the flag, before any model or data is read."""

from __future__ import annotations

import argparse
import math

from ..errors import InvalidArgumentError
from ..loading import resolve_model
from ..sampling_config import DeepCacheConfig, SamplingConfig
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


def sampling_setting(name: str, parse):
    """argparse type for one sampling setting, checked by :class:`~imagpose.sampling_config.SamplingConfig` (where
    the valid values live; the other settings at its defaults), so a bad value stops the command while it is
    parsed."""
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            kind = "an integer" if parse is int else "a number"
            raise argparse.ArgumentTypeError(f"{name} must be {kind}, got {text!r}") from None
        try:
            SamplingConfig(**{name: value})
        except InvalidArgumentError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
        return value

    return convert


def parse_guidance_interval(text: str) -> tuple[float, float]:
    """'0.2:0.8' -> (0.2, 0.8), checked as :func:`imagpose.guidance.check_guidance_interval` checks it."""
    from ..guidance import check_guidance_interval

    try:
        return check_guidance_interval(tuple(float(v) for v in text.split(":")))
    except (ValueError, InvalidArgumentError) as exc:
        raise argparse.ArgumentTypeError(f"expected START:STOP, two fractions of the steps with 0 <= START < STOP "
                                         f"<= 1, e.g. 0.2:0.8, got {text!r}") from exc


def parse_deepcache(text: str) -> DeepCacheConfig:
    """'3' -> DeepCacheConfig(3, 0), '3:1' -> DeepCacheConfig(3, 1): DeepCache's interval (>= 2; 1 would cache
    nothing) and skip branch."""
    try:
        parts = [int(v) for v in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or parts[0] < 2 or (len(parts) == 2 and parts[1] < 0):
        raise argparse.ArgumentTypeError(f"expected INTERVAL[:BRANCH], an interval >= 2 and a branch >= 0, e.g. 3 or "
                                         f"3:1, got {text!r}")
    return DeepCacheConfig(*parts)


def positive_gib(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of GiB, e.g. 24 or 7.5, got {text!r}")
    return value


def parse_size(text: str) -> tuple[int, int]:
    """'256x176' -> (256, 176): height x width."""
    return parse_positive_pair(text, "HEIGHTxWIDTH", "256x176")


def parse_grid(text: str) -> tuple[int, int]:
    """'2x3' -> (2, 3): rows x cols."""
    return parse_positive_pair(text, "ROWSxCOLS", "2x2")


def parse_positive_pair(text: str, form: str, example: str) -> tuple[int, int]:
    """'AxB' -> (A, B), two positive integers, for argparse; ``form`` and ``example`` name the expected form."""
    try:
        first, second = (int(v) for v in text.lower().split("x"))
    except ValueError:
        first = second = 0
    if first < 1 or second < 1:
        raise argparse.ArgumentTypeError(f"expected {form} as two positive integers, e.g. {example}, got {text!r}")
    return first, second


def from_check(check):
    """argparse type from a check that raises :class:`~imagpose.errors.InvalidArgumentError` (where the valid values
    live), so a bad value stops the command while it is parsed."""
    def convert(text: str):
        try:
            return check(text)
        except InvalidArgumentError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return convert
