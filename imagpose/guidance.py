"""Classifier-free guidance on part of the sampling trajectory (``pipe(..., guidance_interval=(start, stop))``).

Kynkäänniemi et al. 2024 ("Applying guidance in a limited interval improves sample and distribution quality in
diffusion models") find guidance harmful at the noisiest steps and needless at the last ones. Their interval is on
the noise level sigma; ours, like diffusers' guiders (``ClassifierFreeGuidance(start=, stop=)``), is on the step
index, which every sampler shares:

    step i of N (0 = the first, noisiest step) is guided  <=>  int(start * N) <= i < int(stop * N)

``(0, 1)`` guides every step (the paper's setting, and the default ``None``). A guided step evaluates the UNet on
``[uncond, cond]`` (2B rows) and combines ``u + w (c - u)``; any other step evaluates the conditional branch
alone (B rows), as ``guidance_scale <= 1`` does for every step.
"""

from __future__ import annotations

import math
import numbers

from .errors import InvalidArgumentError


def check_guidance_interval(interval) -> tuple[float, float] | None:
    """``interval`` as a ``(start, stop)`` float pair, or None; InvalidArgumentError naming what is wrong. What
    depends on the call (its guidance scale, its steps) is checked by :func:`guided_steps`."""
    if interval is None:
        return None
    try:
        start, stop = interval
    except (TypeError, ValueError):
        start = stop = None
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in (start, stop)):
        raise InvalidArgumentError(f"guidance_interval must be a pair (start, stop) of fractions of the sampling "
                                   f"steps in [0, 1], e.g. (0.2, 0.8), got {interval!r}.")
    if not 0 <= start < stop <= 1:
        raise InvalidArgumentError(f"guidance_interval {interval!r} is empty or inverted: it needs 0 <= start < stop "
                                   "<= 1 (fractions of the sampling steps, 0 = the first, noisiest step).")
    return float(start), float(stop)


def guided_steps(num_steps: int, guidance_scale: float, interval: tuple[float, float] | None = None) -> list[bool]:
    """Whether each of the ``num_steps`` steps applies classifier-free guidance (see the module docstring); an
    interval with ``guidance_scale <= 1`` or that covers none of the steps is an InvalidArgumentError."""
    if interval is None:  # the official rule: w <= 1 runs the conditional branch only
        return [guidance_scale > 1] * num_steps
    if guidance_scale <= 1:
        raise InvalidArgumentError(f"guidance_interval {interval!r} selects the steps of classifier-free guidance, "
                                   f"which guidance_scale {guidance_scale} <= 1 turns off; raise guidance_scale or "
                                   "drop guidance_interval.")
    first, stop = int(interval[0] * num_steps), int(interval[1] * num_steps)
    if first >= stop:
        raise InvalidArgumentError(f"guidance_interval {interval!r} covers none of the {num_steps} steps (step i is "
                                   f"guided when int(start * {num_steps}) <= i < int(stop * {num_steps})); widen it "
                                   "or use guidance_scale=1 for no guidance.")
    return [first <= i < stop for i in range(num_steps)]
