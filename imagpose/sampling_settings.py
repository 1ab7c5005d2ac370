"""Valid ranges of the sampling settings, checked once for the pipeline, the SDK and the command line.

    num_inference_steps   integer in [1, num_train_timesteps]   (DDIM picks that many of the training timesteps)
    guidance_scale        finite, >= 0                          (w <= 1 runs the conditional branch only)
    eta                   finite, in [0, 1]                     (0 = deterministic DDIM, 1 = DDPM-like variance)
NaN compares false with every bound, so each check is written to fail on NaN.
"""

from __future__ import annotations

import math
import numbers

from .errors import InvalidArgumentError


def check_sampling_settings(num_inference_steps, guidance_scale, eta, num_train_timesteps: int = 1000) -> None:
    """Raise :class:`~imagpose.errors.InvalidArgumentError` naming the first setting outside its range."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, numbers.Integral):
        raise InvalidArgumentError(f"num_inference_steps must be an integer, got {num_inference_steps!r}.")
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise InvalidArgumentError(f"num_inference_steps must be in [1, {num_train_timesteps}] (the scheduler's "
                                   f"training timesteps), got {num_inference_steps}.")
    if not _real(guidance_scale) or not (math.isfinite(guidance_scale) and guidance_scale >= 0):
        raise InvalidArgumentError(f"guidance_scale must be a finite number >= 0 (values <= 1 turn classifier-free "
                                   f"guidance off; the paper uses 2.0), got {guidance_scale!r}.")
    if not _real(eta) or not (math.isfinite(eta) and 0 <= eta <= 1):
        raise InvalidArgumentError(f"eta must be a finite number in [0, 1] (0 = deterministic DDIM), got {eta!r}.")


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
