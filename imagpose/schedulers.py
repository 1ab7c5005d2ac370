"""The official inference sampler, named.

The official inference builds ``DDIMScheduler(**configs/inference.yaml noise_scheduler_kwargs)``:
v-prediction, zero-terminal-SNR rescale, trailing spacing, steps_offset 1, no clipping, and
``beta_schedule="linear"``. Training used ``"scaled_linear"`` (the inference value is a quirk inherited from
Moore-AnimateAnyone). ``"linear"`` is our default because it is what the official code runs and what the
official fixtures were made with; ``"scaled_linear"`` matches the training noise levels and is offered as an
option (docs/parity_pitfalls.md #5). alpha_bar at t=500: train 0.241, official inference 0.142.
"""

from __future__ import annotations

from diffusers import DDIMScheduler

BETA_SCHEDULES = ("linear", "scaled_linear")

OFFICIAL_DDIM_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="linear",
    clip_sample=False,
    set_alpha_to_one=True,
    steps_offset=1,
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    timestep_spacing="trailing",
)


def official_ddim_scheduler(beta_schedule: str = "linear") -> DDIMScheduler:
    """DDIM as the official inference configures it; ``beta_schedule="scaled_linear"`` matches training."""
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}.")
    return DDIMScheduler(**{**OFFICIAL_DDIM_CONFIG, "beta_schedule": beta_schedule})
