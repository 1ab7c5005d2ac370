"""Random draws shared by the look and pose priors."""

from __future__ import annotations

import numpy as np


def pick(rng: np.random.Generator, options, weights=None):
    return options[rng.choice(len(options), p=weights)]
