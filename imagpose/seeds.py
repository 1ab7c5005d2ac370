"""The one rule for seeds at every entry point (API, command line, wire format, training configs): an integer in
[0, 2**63 - 1], the range torch's generators, numpy's ``default_rng`` and a JSON int64 all take."""

from __future__ import annotations

from .errors import InvalidArgumentError

MAX_SEED = 2**63 - 1


def check_seed(value, name: str = "seed") -> int:
    """``value`` when it is an integer in [0, MAX_SEED]; else an error that names ``name`` and the range."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise InvalidArgumentError(f"{name} must be an integer in [0, 2**63 - 1], got {value!r}.")
    return value

# Seeds of the generated people (imagpose.synthetic), one range each so that no person is in two roles:
TRAINING_PEOPLE_SEED = 0  # `imagpose train all` / `make-data`: the people the shipped model was trained on
HELD_OUT_PEOPLE_SEED = 1000  # held-out evaluation (`train all --eval-seed`, `export quantize --measure`)
CALIBRATION_PEOPLE_SEED = 3000  # INT8/FP8 calibration: neither trained on nor evaluated on
