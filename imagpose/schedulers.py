"""The official inference sampler, named.

The official inference builds ``DDIMScheduler(**configs/inference.yaml noise_scheduler_kwargs)``:
v-prediction, zero-terminal-SNR rescale, trailing spacing, steps_offset 1, no clipping, and
``beta_schedule="linear"``. Training used ``"scaled_linear"`` (the inference value is a quirk inherited from
Moore-AnimateAnyone). ``"linear"`` is our default because it is what the official code runs and what the
official fixtures were made with; ``"scaled_linear"`` matches the training noise levels and is offered as an
option (docs/parity_pitfalls.md #5). alpha_bar at t=500: train 0.241, official inference 0.142.

:class:`IMAGPoseDDIMScheduler` is diffusers' DDIM with one guard for ``eta > 0`` on a zero-terminal-SNR schedule
(see its docstring); with ``eta = 0`` (the official inference) it computes exactly what ``DDIMScheduler`` does.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from .errors import InvalidArgumentError

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


# sigma_t^2 may use at most this fraction of 1 - alpha_bar_prev (1e-6 below it: a few float32 ulps of headroom)
VARIANCE_HEADROOM = 1 - 1e-6


class IMAGPoseDDIMScheduler(DDIMScheduler):
    """diffusers' ``DDIMScheduler`` whose DDIM variance keeps the "direction pointing to x_t" real.

    DDIM's update takes ``sqrt(1 - alpha_bar_prev - sigma_t^2)`` with ``sigma_t^2 = eta^2 var_t``. On a
    zero-terminal-SNR schedule the first step has ``alpha_bar_t = 0``, so ``var_t = 1 - alpha_bar_prev`` exactly
    and, at ``eta = 1``, the square root's argument is 0 in exact arithmetic and a tiny negative number after
    rounding: the latents become NaN (huggingface/diffusers#5969). Here ``var_t`` is capped a few ulps below
    ``1 - alpha_bar_prev``; every other step has ``var_t`` well below the cap and is unchanged.
    """

    def _get_variance(self, timestep: int, prev_timestep: int) -> torch.Tensor:
        variance = super()._get_variance(timestep, prev_timestep)
        alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        return torch.minimum(variance, (1 - alpha_prod_t_prev) * VARIANCE_HEADROOM)


def official_ddim_scheduler(beta_schedule: str = "linear") -> IMAGPoseDDIMScheduler:
    """DDIM as the official inference configures it; ``beta_schedule="scaled_linear"`` matches training."""
    if beta_schedule not in BETA_SCHEDULES:
        raise InvalidArgumentError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}.")
    return IMAGPoseDDIMScheduler(**{**OFFICIAL_DDIM_CONFIG, "beta_schedule": beta_schedule})
