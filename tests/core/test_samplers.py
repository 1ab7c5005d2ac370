"""Samplers by name: each drives diffusers' own solver exactly, on the model's schedule, and the multistep solvers
get closer to a long DDIM run in few steps than DDIM does."""

import json

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, TCDScheduler, UniPCMultistepScheduler
from torchmetrics.functional.image import structural_similarity_index_measure

from imagpose import IMAGPosePipeline, scenarios
from imagpose.errors import InvalidArgumentError
from imagpose.pretrained import shipped_model_dir
from imagpose.samplers import SAMPLERS, make_sampler
from imagpose.samples import sample
from imagpose.schedulers import OFFICIAL_DDIM_CONFIG

# the model's noise schedule, as the solvers' own constructor arguments
SCHEDULE = {key: OFFICIAL_DDIM_CONFIG[key] for key in ("num_train_timesteps", "beta_start", "beta_end",
                                                       "beta_schedule", "prediction_type", "rescale_betas_zero_snr",
                                                       "timestep_spacing", "steps_offset")}
DIFFUSERS_OWN = {
    "dpmsolver++": lambda: DPMSolverMultistepScheduler(**SCHEDULE, algorithm_type="dpmsolver++", solver_order=2,
                                                       final_sigmas_type="zero"),
    "unipc": lambda: UniPCMultistepScheduler(**SCHEDULE, final_sigmas_type="zero"),
}


def request(tile=(64, 64)):
    return scenarios.t2(*sample("person_red_front"), sample("person_red_walking")[1], tile_size=tile, seed=0)


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_runs_the_models_schedule(tiny_pipe, name):
    scheduler = make_sampler(name, tiny_pipe.scheduler.config)
    scheduler.set_timesteps(8)
    ddim = make_sampler("ddim", tiny_pipe.scheduler.config)
    ddim.set_timesteps(8)
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.rescale_betas_zero_snr
    if name in ("lcm", "tcd"):  # a student's steps: from 999 down, among its 50 solver steps (k = 20)
        steps = scheduler.timesteps.long().tolist()
        assert steps[0] == 999 and steps == sorted(set(steps), reverse=True) and all((t + 1) % 20 == 0 for t in steps)
    else:
        assert torch.equal(scheduler.timesteps.long(), ddim.timesteps.long())  # trailing: 999, 874, ...
    assert torch.allclose(scheduler.alphas_cumprod[:-1], ddim.alphas_cumprod[:-1])


@pytest.mark.parametrize("name", ["dpmsolver++", "unipc"])
def test_the_pipeline_drives_diffusers_own_solver_exactly(tiny_pipe, name):
    """Replay the pipeline's model outputs through a solver built by hand from diffusers: the same latents."""
    predictions, steps = [], 5
    result = tiny_pipe(request(), num_inference_steps=steps, guidance_scale=1.0, sampler=name, output_type="latent",
                       progress=False, callback_on_step_end=lambda p, i, t, out: predictions.append(
                           out["prediction"].clone())).results[0]
    solver = DIFFUSERS_OWN[name]()
    solver.set_timesteps(steps)
    layout = tiny_pipe.request_layout(request())
    latents = tiny_pipe.prepare_latents(solver, [torch.Generator().manual_seed(0)], layout.latent_size, "cpu",
                                        torch.float32)
    for t, prediction in zip(solver.timesteps, predictions):
        latents = solver.step(prediction, t, latents).prev_sample
    assert torch.equal(latents[0], result.latents)  # (4, h, w): one request


def test_tcd_drives_diffusers_own_scheduler_with_gamma_as_eta(tiny_pipe):
    """Replay the pipeline's model outputs through diffusers' TCDScheduler with eta = gamma = 0.3 and the request's
    generator: the same latents (TCD's noise between steps comes from the request's seed)."""
    predictions, steps, gamma = [], 4, 0.3
    result = tiny_pipe(request(), num_inference_steps=steps, guidance_scale=1.0, sampler="tcd", eta=gamma,
                       output_type="latent", progress=False, callback_on_step_end=lambda p, i, t, out:
                       predictions.append(out["prediction"].clone())).results[0]
    solver = TCDScheduler(**SCHEDULE)
    solver.set_timesteps(steps)
    layout = tiny_pipe.request_layout(request())
    generator = torch.Generator().manual_seed(0)
    latents = tiny_pipe.prepare_latents(solver, [generator], layout.latent_size, "cpu", torch.float32)
    for t, prediction in zip(solver.timesteps, predictions):
        latents = solver.step(prediction, t, latents, eta=gamma, generator=generator).prev_sample
    assert torch.equal(latents[0], result.latents)
    deterministic = [tiny_pipe(request(), num_inference_steps=steps, guidance_scale=1.0, sampler="tcd",
                               output_type="latent", progress=False).results[0].latents for _ in range(2)]
    assert torch.equal(*deterministic) and not torch.equal(deterministic[0], result.latents)


def test_unknown_sampler_and_eta_on_a_deterministic_solver_are_user_errors(tiny_pipe):
    with pytest.raises(InvalidArgumentError, match="Unknown sampler 'euler'.*ddim, dpmsolver\\+\\+, unipc"):
        tiny_pipe(request(), num_inference_steps=2, sampler="euler", progress=False)
    with pytest.raises(InvalidArgumentError, match="eta applies to the ddim and tcd samplers only"):
        tiny_pipe(request(), num_inference_steps=2, sampler="unipc", eta=0.5, progress=False)


def test_multistep_solvers_get_closer_to_a_long_ddim_run_in_8_steps():
    """On the trained model: 8 steps of DPM-Solver++ 2M or UniPC land nearer 50 DDIM steps than 8 DDIM steps do."""
    pipe = IMAGPosePipeline.from_pretrained(shipped_model_dir())
    tile = (128, 88)

    def target(steps, name):
        return pipe(request(tile), num_inference_steps=steps, sampler=name, output_type="pt",
                    progress=False).results[0].targets[0][None]

    reference = target(50, "ddim")
    ssim = {name: float(structural_similarity_index_measure(target(8, name), reference, data_range=1.0))
            for name in ("ddim", "dpmsolver++", "unipc")}
    assert ssim["dpmsolver++"] > ssim["ddim"] and ssim["unipc"] > ssim["ddim"], ssim


def test_the_command_line_takes_a_sampler(generate_argv, tmp_path, capsys):
    from imagpose.cli import main

    assert main([*generate_argv, "--sampler", "dpmsolver++", "--steps", "3", "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "result.json").read_text())["sampling"]["sampler"] == "dpmsolver++"
    assert main([*generate_argv, "--sampler", "unipc", "--eta", "0.5", "--out", str(tmp_path / "b")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "eta applies to the ddim and tcd samplers only" in error[0]
