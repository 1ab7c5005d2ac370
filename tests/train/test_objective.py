"""imagpose.train.objective against the official training objective, computed by hand on known tensors."""

import math

import pytest
import torch

from imagpose.presets import build_components
from imagpose.train.data import collate
from imagpose.train.objective import (
    STAGE_DROPOUT,
    ConditionDropout,
    draw_objective,
    dropout_masks,
    loss_target,
    min_snr_weight,
    offset_noise,
    training_loss,
    training_scheduler,
)
from imagpose.train.stages import build_trainable

LATENT = (4, 16, 16)  # a 2x2 canvas of 64x64 tiles


def zero_snr_alphas_cumprod() -> torch.Tensor:
    """alpha_bar of the official training schedule, by hand in float64: scaled_linear betas 0.00085 -> 0.012
    (``linspace(sqrt(b0), sqrt(b1))**2``), then Lin et al. 2023, Algorithm 1 (zero terminal SNR)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    sqrt_abar = torch.cumprod(1 - betas, 0).sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    return ((sqrt_abar - last) * first / (first - last)) ** 2


def test_the_training_scheduler_is_the_official_zero_snr_v_prediction_schedule():
    scheduler = training_scheduler()
    config = scheduler.config
    assert (config.beta_schedule, config.prediction_type, config.timestep_spacing) == (
        "scaled_linear", "v_prediction", "trailing")
    assert config.rescale_betas_zero_snr and config.num_train_timesteps == 1000
    assert scheduler.alphas_cumprod[-1].item() == pytest.approx(0.0, abs=1e-12)  # zero terminal SNR
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), zero_snr_alphas_cumprod(), atol=2e-6, rtol=0)
    # alpha_bar at t=500 is 0.241 with the training betas (the official inference's "linear" gives 0.142)
    assert scheduler.alphas_cumprod[500].item() == pytest.approx(0.241, abs=1e-3)
    assert training_scheduler("epsilon").config.prediction_type == "epsilon"


def test_the_v_target_is_sqrt_abar_eps_minus_sqrt_one_minus_abar_z0():
    scheduler = training_scheduler()
    generator = torch.Generator().manual_seed(0)
    z0, eps = torch.randn((4, *LATENT), generator=generator), torch.randn((4, *LATENT), generator=generator)
    timesteps = torch.tensor([0, 250, 640, 999])
    abar = scheduler.alphas_cumprod[timesteps].double()[:, None, None, None]
    by_hand = abar.sqrt() * eps.double() - (1 - abar).sqrt() * z0.double()
    torch.testing.assert_close(loss_target(scheduler, z0, eps, timesteps).double(), by_hand, atol=1e-6, rtol=0)
    torch.testing.assert_close(loss_target(scheduler, z0, eps, timesteps)[3], -z0[3], atol=1e-6, rtol=0)  # abar 0
    assert loss_target(training_scheduler("epsilon"), z0, eps, timesteps) is eps


def test_min_snr_weights_by_hand_for_v_and_epsilon():
    timesteps = torch.arange(1000)
    abar = zero_snr_alphas_cumprod()
    snr = abar / (1 - abar)
    v_weight = min_snr_weight(training_scheduler(), timesteps, 5.0).double()
    eps_weight = min_snr_weight(training_scheduler("epsilon"), timesteps, 5.0).double()
    torch.testing.assert_close(v_weight, torch.clamp(snr + 1, max=5) / (snr + 1), atol=1e-5, rtol=1e-4)
    inner = slice(0, 999)  # SNR > 0
    torch.testing.assert_close(eps_weight[inner], torch.clamp(snr[inner], max=5) / snr[inner], atol=1e-5, rtol=1e-4)
    assert eps_weight[999].item() == 1.0  # 0/0 at the zero-SNR step: its limit min(SNR, 5)/SNR -> 1, not NaN
    assert v_weight[999].item() == 1.0
    assert torch.isfinite(eps_weight).all() and torch.isfinite(v_weight).all()
    # high SNR (t = 0: SNR ~ 1175) is down-weighted; low SNR keeps weight 1 (v: SNR + 1 <= 5, eps: SNR <= 5)
    assert v_weight[0].item() == pytest.approx(5 / (snr[0].item() + 1), rel=1e-4)
    assert eps_weight[0].item() == pytest.approx(5 / snr[0].item(), rel=1e-4)
    assert (v_weight[snr + 1 <= 5] == 1).all() and (eps_weight[inner][snr[inner] <= 5] == 1).all()


def test_stage1_drops_dino_for_the_whole_batch_at_the_official_rate():
    generator, batch, draws = torch.Generator().manual_seed(1), 6, 4000
    fired = []
    for _ in range(draws):
        drop_dino, drop_reference = dropout_masks(generator, batch, STAGE_DROPOUT["stage1"])
        assert drop_dino.all() or not drop_dino.any()  # one Bernoulli per batch, all or nothing
        assert not drop_reference.any()  # the VAE tokens never drop in stage 1
        fired.append(bool(drop_dino[0]))
    assert_binomial_rate(sum(fired), draws, 0.1)


@pytest.mark.parametrize("stage", ["stage2", "end2end"])
def test_stage2_and_end2end_drop_per_sample_5_5_5_percent(stage):
    n = 40000
    drop_dino, drop_reference = dropout_masks(torch.Generator().manual_seed(2), n, STAGE_DROPOUT[stage])
    counts = {"dino only": int((drop_dino & ~drop_reference).sum()), "reference only": int(
        (~drop_dino & drop_reference).sum()), "both": int((drop_dino & drop_reference).sum())}
    for count in counts.values():
        assert_binomial_rate(count, n, 0.05)
    assert_binomial_rate(n - sum(counts.values()), n, 0.85)


def assert_binomial_rate(count: int, n: int, p: float, sigmas: float = 5.0) -> None:
    tolerance = sigmas * math.sqrt(n * p * (1 - p))
    assert abs(count - n * p) <= tolerance, f"{count} of {n}, expected {n * p:.0f} +- {tolerance:.0f}"


def test_no_dropout_drops_nothing():
    drop_dino, drop_reference = dropout_masks(torch.Generator().manual_seed(0), 1000, ConditionDropout())
    assert not drop_dino.any() and not drop_reference.any()


def test_the_noise_offset_is_constant_per_sample_and_channel():
    shape, state = (3, 4, 8, 8), torch.Generator().manual_seed(5).get_state()
    noise = offset_noise(shape, torch.Generator().set_state(state), 0.05)
    plain = offset_noise(shape, torch.Generator().set_state(state), 0.0)  # the same N(0, I) draw without offset
    offset = noise - plain
    torch.testing.assert_close(offset, offset[:, :, :1, :1].expand(shape), atol=1e-6, rtol=0)
    per_channel = offset[:, :, 0, 0]
    assert per_channel.abs().max() < 0.05 * 5 and per_channel.std() > 0.005  # 0.05 N(0, 1), not zero
    assert len(set(per_channel.flatten().tolist())) == per_channel.numel()  # its own value per (sample, channel)


def test_draw_objective_is_a_function_of_the_generator_state_and_rows_slice_it():
    state = torch.Generator().manual_seed(7).get_state()

    def draw():
        return draw_objective(torch.Generator().set_state(state), 5, LATENT, STAGE_DROPOUT["stage2"], 0.05)

    first, second = draw(), draw()
    names = ("timesteps", "noise", "vae_noise", "drop_dino", "drop_reference")
    for name in names:
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert first.timesteps.dtype == torch.int64 and ((first.timesteps >= 0) & (first.timesteps < 1000)).all()
    assert first.noise.shape == (5, *LATENT) and first.vae_noise.shape == (3, 5, *LATENT)
    other = draw_objective(torch.Generator().manual_seed(8), 5, LATENT, STAGE_DROPOUT["stage2"], 0.05)
    assert not torch.equal(first.noise, other.noise)
    part = first.rows(2, 4)  # one process's share of the global batch
    for name in ("timesteps", "noise", "drop_dino", "drop_reference"):
        assert torch.equal(getattr(part, name), getattr(first, name)[2:4]), name
    assert torch.equal(part.vae_noise, first.vae_noise[:, 2:4])
    moved = first.to("cpu")
    assert all(torch.equal(getattr(moved, name), getattr(first, name)) for name in names)


# ----------------------------------------------------------------------------- the loss on a tiny model
@pytest.fixture(scope="module")
def tiny_stage1():
    components = build_components("tiny", seed=0)
    return build_trainable("stage1", "tiny", seed=0).eval(), components["vae"], components["image_encoder"]


def test_training_loss_is_a_finite_scalar_weighted_per_sample_by_min_snr(tiny_stage1, sample_dataset, one_thread):
    model, vae, image_encoder = tiny_stage1
    batch = collate([sample_dataset[0], sample_dataset[1]])
    scheduler = training_scheduler()
    draws = draw_objective(torch.Generator().manual_seed(3), 2, LATENT, ConditionDropout(), 0.05)
    draws.timesteps = torch.tensor([10, 700])  # one down-weighted (high SNR) and one full-weight sample
    with torch.no_grad():
        loss, per_sample = training_loss(model, vae, image_encoder, scheduler, batch, draws, snr_gamma=5.0)
        plain, plain_per_sample = training_loss(model, vae, image_encoder, scheduler, batch, draws, snr_gamma=0.0)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    assert per_sample.shape == (2,) and torch.isfinite(per_sample).all()
    torch.testing.assert_close(loss, per_sample.mean())
    weights = min_snr_weight(scheduler, draws.timesteps, 5.0)
    assert weights[0] < 0.1 and weights[1] == 1.0
    torch.testing.assert_close(per_sample, plain_per_sample * weights)
    torch.testing.assert_close(plain, plain_per_sample.mean())


def test_training_loss_zeroes_exactly_the_dropped_conditions(tiny_stage1, sample_dataset, one_thread):
    """The DINO input pixels of the samples drawn for it, and the reference latent fed to the FLC tokenizer."""
    model, vae, image_encoder = tiny_stage1
    batch = collate([sample_dataset[2], sample_dataset[3]])
    draws = draw_objective(torch.Generator().manual_seed(4), 2, LATENT, ConditionDropout(), 0.05)
    draws.drop_dino, draws.drop_reference = torch.tensor([True, False]), torch.tensor([False, True])
    seen = {}
    hooks = [image_encoder.register_forward_pre_hook(lambda _, args: seen.__setitem__("dino", args[0])),
             model.flc_tokenizer.register_forward_pre_hook(lambda _, args: seen.__setitem__("reference", args[0]))]
    try:
        with torch.no_grad():
            training_loss(model, vae, image_encoder, training_scheduler(), batch, draws, snr_gamma=5.0)
    finally:
        for hook in hooks:
            hook.remove()
    assert (seen["dino"][0] == 0).all() and torch.equal(seen["dino"][1], batch["dino_pixels"][1])
    assert seen["reference"][0].abs().sum() > 0 and (seen["reference"][1] == 0).all()
