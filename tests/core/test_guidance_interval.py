"""Guidance on part of the trajectory: 2B-row UNet calls inside the interval, B rows outside; (0, 1) is plain CFG;
guidance_scale <= 1 never runs the unconditional branch; bad intervals are user errors."""

import pytest
import torch

from imagpose import scenarios
from imagpose.errors import InvalidArgumentError
from imagpose.guidance import guided_steps
from imagpose.samples import sample


def request(seed=0):
    return scenarios.t2(*sample("person_red_front"), sample("person_red_walking")[1], tile_size=(64, 64), seed=seed)


def run(pipe, steps=4, **kwargs):
    """(final latents, UNet batch size of each step, latents after each step)."""
    sizes, after = [], []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    try:
        result = pipe([request(0), request(1)], num_inference_steps=steps, output_type="latent", progress=False,
                      callback_on_step_end=lambda p, i, t, out: after.append(out["latents"].clone()), **kwargs)
    finally:
        hook.remove()
    return torch.stack([r.latents for r in result.results]), sizes, after


def test_steps_inside_the_interval_run_2b_rows_and_the_others_b(tiny_pipe):
    _, sizes, _ = run(tiny_pipe, guidance_scale=2.0, guidance_interval=(0.25, 0.75))
    assert sizes == [2, 4, 4, 2]  # two requests: B = 2; int(0.25 * 4) = 1 <= i < int(0.75 * 4) = 3
    assert guided_steps(10, 2.0, (0.2, 0.55)) == [False, False, True, True, True] + [False] * 5  # diffusers' rule


def test_the_whole_interval_is_plain_cfg_bit_for_bit(tiny_pipe):
    plain, plain_sizes, _ = run(tiny_pipe, guidance_scale=2.0)
    whole, sizes, _ = run(tiny_pipe, guidance_scale=2.0, guidance_interval=(0.0, 1.0))
    assert sizes == plain_sizes == [4] * 4 and torch.equal(whole, plain)


def test_unguided_steps_are_the_conditional_branch_and_guided_steps_plain_cfg(tiny_pipe):
    _, free_sizes, free = run(tiny_pipe, steps=2, guidance_scale=1.0)  # w <= 1: the conditional branch only
    _, _, cfg = run(tiny_pipe, steps=2, guidance_scale=2.0)
    _, late_sizes, late = run(tiny_pipe, steps=2, guidance_scale=2.0, guidance_interval=(0.5, 1.0))
    _, _, early = run(tiny_pipe, steps=2, guidance_scale=2.0, guidance_interval=(0.0, 0.5))
    assert free_sizes == [2, 2] and late_sizes == [2, 4]
    assert torch.equal(late[0], free[0]) and not torch.equal(late[0], cfg[0])  # step 0 outside: no guidance
    assert torch.equal(early[0], cfg[0])  # step 0 inside: w (c - u) as plain CFG


@pytest.mark.parametrize("interval, message", [
    ((0.5, 0.5), "empty or inverted"),
    ((0.8, 0.2), "empty or inverted"),
    ((-0.1, 0.5), "empty or inverted"),
    ((0.0, 1.5), "empty or inverted"),
    ((0.5,), "pair \\(start, stop\\)"),
    ((0.0, float("nan")), "pair \\(start, stop\\)"),
    ("0.2:0.8", "pair \\(start, stop\\)"),
    ((0.2, True), "pair \\(start, stop\\)"),
    ((0.5, 0.6), "covers none of the 2 steps"),
])
def test_bad_intervals_are_user_errors(tiny_pipe, interval, message):
    with pytest.raises(InvalidArgumentError, match=message):
        tiny_pipe(request(), num_inference_steps=2, guidance_interval=interval, progress=False)


def test_an_interval_without_guidance_is_a_user_error(tiny_pipe):
    with pytest.raises(InvalidArgumentError, match="guidance_scale 1.0 <= 1 turns off"):
        tiny_pipe(request(), num_inference_steps=2, guidance_scale=1.0, guidance_interval=(0.2, 0.8), progress=False)


def test_the_command_line_takes_a_guidance_interval(generate_argv, tmp_path, capsys):
    from imagpose.cli import main

    for name, extra in (("plain", []), ("interval", ["--guidance-interval", "0.5:1"])):
        assert main([*generate_argv, "--steps", "2", *extra, "--out", str(tmp_path / name)]) == 0
    target = "target_tile3.png"  # T2: the target is the last tile; step 0 unguided changes it
    assert (tmp_path / "plain" / target).read_bytes() != (tmp_path / "interval" / target).read_bytes()
    for bad in ("0.8:0.2", "0.2", "a:b"):
        with pytest.raises(SystemExit) as exit_info:
            main([*generate_argv, "--guidance-interval", bad, "--out", str(tmp_path / "bad")])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert "--guidance-interval" in error and "START:STOP" in error, error
    no_guidance = ["--guidance", "1", "--guidance-interval", "0.2:0.8"]
    assert main([*generate_argv, *no_guidance, "--out", str(tmp_path / "c")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "turns off" in error[0], error
