"""End-to-end runs of every scenario on the tiny preset (random weights)."""

import math

import pytest
import torch

from imagpose import scenarios
from imagpose.canvas import View
from imagpose.errors import InvalidArgumentError

STEPS = 3


def _run(pipe, requests, **kwargs):
    return pipe(requests, num_inference_steps=STEPS, progress=False, **kwargs)


@pytest.fixture(scope="module")
def red(samples):
    return {name: samples(f"person_red_{name}") for name in ("front", "arms_up", "walking", "side",
                                                              "hands_on_hips")}


@pytest.mark.parametrize("scenario", ["t1", "t2", "t3", "imagpose_star", "mixed"])
def test_every_scenario_runs_with_requested_tile_size(tiny_pipe, red, scenario):
    tile = (64, 64)
    build = {
        "t1": lambda: scenarios.t1(*red["front"], red["walking"][1], tile_size=tile, seed=1),
        "t2": lambda: scenarios.t2(*red["front"], red["walking"][1], tile_size=tile, seed=1),
        "t3": lambda: scenarios.t3([red["front"], red["side"], red["hands_on_hips"]], red["walking"][1],
                                   tile_size=tile, seed=1),
        "imagpose_star": lambda: scenarios.imagpose_star(*red["front"], [red["arms_up"][1], red["walking"][1],
                                                                         red["side"][1]], tile_size=tile, seed=1),
        "mixed": lambda: scenarios.mixed([View.source(*red["front"]), View.target(red["walking"][1]),
                                          View.target(red["arms_up"][1]), View.source(*red["side"])],
                                         tile_size=tile, seed=1),
    }[scenario]
    request = build()
    result = _run(tiny_pipe, request).results[0]
    assert result.target_indices == request.target_indices
    assert len(result.targets) == len(request.target_indices)
    assert all(image.size == (64, 64) for image in result.targets)
    assert result.canvas.size == (128, 128)
    assert result.seed == 1


def test_paper_tile_256x176_is_padded_and_cropped_back(tiny_pipe, red):
    request = scenarios.t2(*red["front"], red["walking"][1], seed=3)  # samples are 176x256 (W x H)
    canvas = tiny_pipe.build_canvas(request)
    assert canvas.layout.tile_height == 256 and canvas.layout.tile_width == 176
    assert canvas.layout.padded_tile[1] % tiny_pipe.pad_multiple == 0
    result = _run(tiny_pipe, request).results[0]
    assert result.targets[0].size == (176, 256)
    assert result.canvas.size == (352, 512)


def test_2x3_grid_runs(tiny_pipe, red):
    request = scenarios.imagpose_star(*red["front"], [red[n][1] for n in ("arms_up", "walking", "side")],
                                      grid=(2, 3), tile_size=(64, 64), seed=5)
    result = _run(tiny_pipe, request, output_type="pt").results[0]
    assert result.canvas.shape == (3, 128, 192)
    assert [t.shape for t in result.targets] == [(3, 64, 64)] * 3
    assert result.latents.shape == (4, 16, 24)


def test_same_seed_same_images_and_batching_does_not_change_results(tiny_pipe, red):
    def request(seed, target="walking"):
        return scenarios.t2(*red["front"], red[target][1], tile_size=(64, 64), seed=seed)

    alone = _run(tiny_pipe, request(7), output_type="pt").results[0]
    again = _run(tiny_pipe, request(7), output_type="pt").results[0]
    torch.testing.assert_close(alone.canvas, again.canvas, rtol=0, atol=0)
    other = _run(tiny_pipe, request(8), output_type="pt").results[0]
    assert (alone.canvas - other.canvas).abs().max() > 1e-3
    batch = _run(tiny_pipe, [request(8), request(7), request(9, "side")], output_type="pt").results
    assert [r.seed for r in batch] == [8, 7, 9]
    torch.testing.assert_close(batch[1].canvas, alone.canvas, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch[0].canvas, other.canvas, rtol=1e-5, atol=1e-5)


def test_mixed_layouts_in_one_call_keep_request_order(tiny_pipe, red):
    small = scenarios.t2(*red["front"], red["walking"][1], tile_size=(64, 64), seed=1, name="small")
    wide = scenarios.t2(*red["front"], red["walking"][1], tile_size=(64, 96), seed=1, name="wide")
    results = _run(tiny_pipe, [wide, small]).results
    assert [r.name for r in results] == ["wide", "small"]
    assert results[0].targets[0].size == (96, 64) and results[1].targets[0].size == (64, 64)


def test_output_types_guidance_and_callback(tiny_pipe, red):
    request = scenarios.t2(*red["front"], red["walking"][1], tile_size=(64, 64), seed=2)
    latent = _run(tiny_pipe, request, output_type="latent").results[0]
    assert latent.targets == [] and latent.canvas is None and latent.latents.shape == (4, 16, 16)
    seen = []
    _run(tiny_pipe, request, guidance_scale=1.0, callback_on_step_end=lambda p, i, t, kw: seen.append(
        (i, int(t), kw["prediction"].shape[0])))
    assert [s[0] for s in seen] == [0, 1, 2]
    assert all(s[2] == 1 for s in seen)  # w <= 1: no unconditional batch
    no_cfg = _run(tiny_pipe, request, guidance_scale=1.0, output_type="latent").results[0]
    assert (no_cfg.latents - latent.latents).abs().max() > 1e-4


def test_generator_overrides_seed_and_is_reported(tiny_pipe, red):
    request = scenarios.t2(*red["front"], red["walking"][1], tile_size=(64, 64), seed=2)
    generator = torch.Generator().manual_seed(1234)
    result = _run(tiny_pipe, request, generator=generator, output_type="latent").results[0]
    assert result.seed == 1234


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(output_type="np"), "output_type"),
    (dict(guidance_scale=-1.0), "guidance_scale"),
    (dict(guidance_scale=math.nan), "guidance_scale"),
    (dict(guidance_scale=math.inf), "guidance_scale"),
    (dict(eta=math.nan), "eta"),
    (dict(generator=[torch.Generator(), torch.Generator()]), "generators"),
])
def test_bad_call_arguments_are_user_errors(tiny_pipe, red, kwargs, match):
    request = scenarios.t2(*red["front"], red["walking"][1], tile_size=(64, 64))
    with pytest.raises(InvalidArgumentError, match=match):
        tiny_pipe(request, progress=False, **{"num_inference_steps": 1, **kwargs})


@pytest.mark.parametrize("requests", ["not a request", [], [None]])
def test_what_is_not_a_request_is_a_user_error(tiny_pipe, requests):
    with pytest.raises(InvalidArgumentError, match="PoseRequest"):
        tiny_pipe(requests)


def test_initial_noise_is_one_draw_per_request_generator(tiny_pipe):
    """diffusers' randn_tensor with one generator per row draws exactly what a per-request torch.randn does."""
    scheduler = tiny_pipe.scheduler
    latents = tiny_pipe.prepare_latents(scheduler, [torch.Generator().manual_seed(s) for s in (3, 4)], (16, 24),
                                        torch.device("cpu"), torch.float32)
    expected = torch.cat([torch.randn((1, 4, 16, 24), generator=torch.Generator().manual_seed(s)) for s in (3, 4)])
    torch.testing.assert_close(latents, expected * scheduler.init_noise_sigma, rtol=0, atol=0)


def test_ctrl_c_between_steps_stops_the_call_at_once(tiny_pipe, red):
    request = scenarios.t2(*red["front"], red["walking"][1], tile_size=(64, 64), seed=1)
    steps = []

    def interrupt(pipe, step, timestep, tensors):  # as a SIGINT arriving while step 1 ran
        steps.append(step)
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tiny_pipe(request, num_inference_steps=5, output_type="latent", callback_on_step_end=interrupt,
                  progress=False)
    assert steps == [0, 1]


def test_pipeline_save_and_load(tmp_path, tiny_pipe, red):
    from imagpose import IMAGPosePipeline

    tiny_pipe.save_pretrained(tmp_path / "pipe")
    loaded = IMAGPosePipeline.from_pretrained(tmp_path / "pipe")
    request = scenarios.t2(*red["front"], red["walking"][1], tile_size=(64, 64), seed=4)
    a = _run(tiny_pipe, request, output_type="latent").results[0].latents
    b = _run(loaded, request, output_type="latent").results[0].latents
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        IMAGPosePipeline.from_pretrained(tmp_path)


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_ddpm_like_eta_1_stays_finite_on_the_zero_snr_schedule(tiny_pipe, red, steps):
    """Regression: at eta = 1 the first DDIM step of a zero-terminal-SNR schedule took the square root of a
    rounding-negative number (diffusers#5969) and every latent became NaN (2 steps: seen on the tiny preset)."""
    request = scenarios.t2(*red["front"], red["walking"][1], tile_size=(64, 64), seed=0)
    result = tiny_pipe(request, num_inference_steps=steps, eta=1.0, output_type="latent", progress=False).results[0]
    assert torch.isfinite(result.latents).all()


def test_the_variance_guard_leaves_every_step_but_the_zero_snr_one_unchanged():
    from diffusers import DDIMScheduler

    from imagpose.schedulers import official_ddim_scheduler

    ours = official_ddim_scheduler()
    theirs = DDIMScheduler.from_config(ours.config)
    for steps in (2, 20, 50):
        ours.set_timesteps(steps)
        for t in ours.timesteps.tolist():
            prev = t - ours.config.num_train_timesteps // steps
            a, b = ours._get_variance(t, prev), theirs._get_variance(t, prev)
            assert a == b or (ours.alphas_cumprod[t] == 0 and 0 < b - a <= 2e-6 * b), (steps, t, float(a), float(b))
