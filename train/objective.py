"""The official IMAGPose training objective: noise schedule, v / epsilon targets, Min-SNR weight, noise offset,
condition dropout (``train_stage1.py`` / ``train_stage2.py``; the paper's Eq. 1/4 write an epsilon-MSE).

For a batch of canvases (B requests, latent canvas 4 x h x w):

    z_0  = VAE(target canvas).sample * 0.18215           (also the masked canvas, and the reference for the FLC)
    eps  = N(0, I) + noise_offset * N(0, I)[b, c, 1, 1]   t ~ U{0, ..., 999}
    z_t  = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps        (scheduler.add_noise)
    v    = sqrt(abar_t) eps - sqrt(1 - abar_t) z_0        (scheduler.get_velocity; target "epsilon": eps)
    pred = UNet(cat[z_t, flag, masked latent], t, cat[DINO tokens, FLC tokens], PoseGuider(pose))
    loss = mean_b  w(SNR_t) * mean_{c,h,w} (pred - target)^2,   SNR_t = abar_t / (1 - abar_t)
    w    = min(SNR + 1, gamma) / (SNR + 1) for v,  min(SNR, gamma) / SNR for epsilon   (Min-SNR, gamma 5)

Every random number of a step (t, eps, the VAE posterior samples, the dropout draws) comes from one
:class:`ObjectiveDraws`, drawn for the *global* batch from a CPU generator shared by all processes; each process
takes its own rows. A run therefore sees the same numbers on any device and any number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from diffusers.training_utils import compute_snr

from imagpose.autoencoders import encode_for_training
from imagpose.schedulers import IMAGPoseDDIMScheduler, official_ddim_scheduler

TRAIN_BETA_SCHEDULE = "scaled_linear"  # train_stage*.py override the config's "linear"
NUM_ENCODED = 3  # VAE posterior samples per request: target canvas, masked canvas, reference canvas


def training_scheduler(prediction_type: str = "v_prediction") -> IMAGPoseDDIMScheduler:
    """The official training noise scheduler: the inference DDIM config with ``beta_schedule="scaled_linear"``
    (zero-terminal-SNR rescale, trailing spacing), predicting ``prediction_type``."""
    scheduler = official_ddim_scheduler(TRAIN_BETA_SCHEDULE)
    if prediction_type != scheduler.config.prediction_type:
        scheduler = IMAGPoseDDIMScheduler.from_config({**scheduler.config, "prediction_type": prediction_type})
    return scheduler


def loss_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """v = sqrt(abar) eps - sqrt(1 - abar) z_0 (v-prediction) or eps, per ``scheduler.config.prediction_type``."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def min_snr_weight(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B,) Min-SNR-gamma loss weights (Hang et al. 2023), as the official code computes them.

    v-prediction: min(SNR + 1, gamma) / (SNR + 1). Epsilon: min(SNR, gamma) / SNR, which is 0/0 at the zero-SNR
    last step; there it takes its limit, 1 (the official code would produce NaN; it trains v only).
    """
    snr = compute_snr(scheduler, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        return torch.clamp(snr + 1, max=gamma) / (snr + 1)
    return torch.where(snr > 0, torch.clamp(snr, max=gamma) / snr.clamp(min=torch.finfo(snr.dtype).tiny), 1.0)


@dataclass(frozen=True)
class ConditionDropout:
    """Classifier-free-guidance dropout of the appearance conditions (pose, masked canvas and flag never drop).

    ``per_batch_dino``: one Bernoulli draw per batch zeroes every DINO input (stage 1, official 0.1). The per-sample
    rates split one uniform draw u: u < a drops DINO only, a <= u < a + b the reference latent only (the FLC then
    emits its bias tokens), a + b <= u < a + b + c both (stage 2 / end2end: 0.05 each).
    """

    per_batch_dino: float = 0.0
    dino_only: float = 0.0
    reference_only: float = 0.0
    both: float = 0.0


STAGE_DROPOUT = {
    "stage1": ConditionDropout(per_batch_dino=0.1),
    "stage2": ConditionDropout(dino_only=0.05, reference_only=0.05, both=0.05),
    "end2end": ConditionDropout(dino_only=0.05, reference_only=0.05, both=0.05),
}


@dataclass
class ObjectiveDraws:
    """The random numbers of one step for B requests (rows), drawn by :func:`draw_objective`.

    timesteps (B,) int64; noise (B, 4, h, w) with its offset; vae_noise (3, B, 4, h, w) posterior samples of the
    target, masked and reference canvases; drop_dino / drop_reference (B,) bool.
    """

    timesteps: torch.Tensor
    noise: torch.Tensor
    vae_noise: torch.Tensor
    drop_dino: torch.Tensor
    drop_reference: torch.Tensor

    def rows(self, start: int, stop: int) -> ObjectiveDraws:
        """This process's share of the global batch."""
        return ObjectiveDraws(self.timesteps[start:stop], self.noise[start:stop], self.vae_noise[:, start:stop],
                              self.drop_dino[start:stop], self.drop_reference[start:stop])

    def to(self, device) -> ObjectiveDraws:
        return ObjectiveDraws(*(getattr(self, f.name).to(device) for f in fields(self)))


def offset_noise(shape: tuple[int, ...], generator: torch.Generator, noise_offset: float) -> torch.Tensor:
    """N(0, I) of ``shape`` (B, C, h, w) plus ``noise_offset`` * N(0, 1) constant over each (sample, channel)."""
    noise = torch.randn(shape, generator=generator)
    if noise_offset > 0:
        noise = noise + noise_offset * torch.randn((*shape[:2], 1, 1), generator=generator)
    return noise


def dropout_masks(generator: torch.Generator, batch_size: int,
                  dropout: ConditionDropout) -> tuple[torch.Tensor, torch.Tensor]:
    """(drop_dino, drop_reference), each (B,) bool (see :class:`ConditionDropout`)."""
    fire = torch.rand(1, generator=generator) < dropout.per_batch_dino
    u = torch.rand(batch_size, generator=generator)
    a, b, c = dropout.dino_only, dropout.reference_only, dropout.both
    both = (u >= a + b) & (u < a + b + c)
    drop_dino = (u < a) | both | fire
    drop_reference = ((u >= a) & (u < a + b)) | both
    return drop_dino, drop_reference


def draw_objective(generator: torch.Generator, batch_size: int, latent_shape: tuple[int, int, int],
                   dropout: ConditionDropout, noise_offset: float, num_train_timesteps: int = 1000) -> ObjectiveDraws:
    """Every random number of one step for ``batch_size`` requests on latent canvases of ``latent_shape`` (4, h, w),
    from a CPU ``generator`` (the same numbers on every device)."""
    timesteps = torch.randint(0, num_train_timesteps, (batch_size,), generator=generator)
    noise = offset_noise((batch_size, *latent_shape), generator, noise_offset)
    vae_noise = torch.randn((NUM_ENCODED, batch_size, *latent_shape), generator=generator)
    drop_dino, drop_reference = dropout_masks(generator, batch_size, dropout)
    return ObjectiveDraws(timesteps, noise, vae_noise, drop_dino, drop_reference)


@torch.no_grad()
def encode_canvases(vae, batch: dict, vae_noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z_0, masked latents, reference latents), each (B, 4, h, w) float32: the target, masked and reference canvases
    of ``batch`` encoded as training draws them (``vae_noise`` (3, B, 4, h, w): the posterior samples)."""
    dtype = next(vae.parameters()).dtype
    return tuple(encode_for_training(vae, batch[name].to(dtype), noise).float()
                 for name, noise in zip(("target_pixels", "masked_pixels", "reference_pixels"), vae_noise))


def training_loss(model, vae, image_encoder, scheduler, batch: dict, draws: ObjectiveDraws,
                  snr_gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, per-sample loss (B,)) of one batch of training items (``imagpose.train.data``; tensors on the device).

    ``model`` is the trainable :class:`~imagpose.train.stages.IMAGPoseTrainingModel` (maybe wrapped by accelerate);
    ``vae`` and ``image_encoder`` are frozen.
    """
    dtype = next(vae.parameters()).dtype
    latents, masked_latents, reference_latents = encode_canvases(vae, batch, draws.vae_noise)
    with torch.no_grad():
        dino_pixels = torch.where(draws.drop_dino[:, None, None, None], 0.0, batch["dino_pixels"])
        dino_tokens = image_encoder(dino_pixels.to(dtype)).last_hidden_state  # (B, 257, D)
    reference_latents = torch.where(draws.drop_reference[:, None, None, None], 0.0, reference_latents)

    noisy = scheduler.add_noise(latents, draws.noise, draws.timesteps)
    target = loss_target(scheduler, latents, draws.noise, draws.timesteps)
    sample = torch.cat([noisy, batch["flag"].float(), masked_latents], dim=1)  # (B, 9, h, w), official order
    prediction = model(sample, draws.timesteps, dino_tokens, batch["pose"], reference_latents, batch["grid"])

    per_sample = (prediction.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
    if snr_gamma > 0:
        per_sample = per_sample * min_snr_weight(scheduler, draws.timesteps, snr_gamma)
    return per_sample.mean(), per_sample
