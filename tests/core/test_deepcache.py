"""DeepCache: which blocks and CVA modules run on full and cached steps, the shallow path rejoining the deep one
exactly, interval 1 equal to the plain pipeline, the cache across a guidance interval, and bad settings."""

import pytest
import torch

from imagpose import scenarios
from imagpose.errors import InvalidArgumentError
from imagpose.models.cva import CrossViewAttention
from imagpose.samples import sample

# tiny preset (3 levels, 1 layer per down block, 2 per up block): skips 0 conv_in, 1 down0 layer, 2 down0
# downsampler, 3 down1 layer, 4 down1 downsampler, 5 down2 layer; up layers consume them deepest first
CACHED_STEP_MODULES = {  # branch -> (blocks, CVA modules) that run on a cached step
    0: ({"up_blocks.2"}, {"up_blocks.2.motion_modules.1"}),
    1: ({"down_blocks.0", "up_blocks.2"},
        {"down_blocks.0.motion_modules.0", "up_blocks.2.motion_modules.0", "up_blocks.2.motion_modules.1"}),
    3: ({"down_blocks.0", "down_blocks.1", "up_blocks.1", "up_blocks.2"},
        {"down_blocks.0.motion_modules.0", "down_blocks.1.motion_modules.0", "up_blocks.1.motion_modules.0",
         "up_blocks.1.motion_modules.1", "up_blocks.2.motion_modules.0", "up_blocks.2.motion_modules.1"}),
}


def request(seed=0):
    return scenarios.t2(*sample("person_red_front"), sample("person_red_walking")[1], tile_size=(64, 64), seed=seed)


def traced_run(pipe, steps, **kwargs):
    """Final latents and, per step, the UNet batch size and the names of the blocks and CVA modules that ran."""
    unet = pipe.unet
    blocks = {f"down_blocks.{i}": b for i, b in enumerate(unet.down_blocks)}
    blocks |= {"mid_block": unet.mid_block} | {f"up_blocks.{i}": b for i, b in enumerate(unet.up_blocks)}
    modules = blocks | dict(unet.cva_modules()) | {"conv_in": unet.conv_in}
    steps_seen, current = [], {"ran": [], "rows": None}

    def hook(name):
        def record(module, args, output):
            current["ran"].append(name)
            if name == "conv_in":
                current["rows"] = output.shape[0]
        return record

    def end_step(p, i, t, out):
        steps_seen.append((current["rows"], current["ran"]))
        current["ran"] = []

    handles = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
    try:
        result = pipe(request(), num_inference_steps=steps, output_type="latent", progress=False,
                      callback_on_step_end=end_step, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return result.results[0].latents, steps_seen


def all_modules(unet):
    blocks = {f"down_blocks.{i}" for i in range(len(unet.down_blocks))} | {"mid_block"}
    blocks |= {f"up_blocks.{i}" for i in range(len(unet.up_blocks))}
    return blocks, {name for name, _ in unet.cva_modules()}


@pytest.mark.parametrize("branch", sorted(CACHED_STEP_MODULES))
def test_full_steps_run_every_block_and_cached_steps_only_the_shallow_ones(tiny_pipe, branch):
    _, steps = traced_run(tiny_pipe, 5, deepcache_interval=3, deepcache_branch=branch)
    every_block, every_cva = all_modules(tiny_pipe.unet)
    cached_blocks, cached_cva = CACHED_STEP_MODULES[branch]
    for index, (rows, ran) in enumerate(steps):
        blocks, cva = (every_block, every_cva) if index in (0, 3) else (cached_blocks, cached_cva)
        assert rows == 2, index  # CFG: [uncond, cond] on every step, also on cached ones
        assert sorted(n for n in ran if n in every_block) == sorted(blocks), index  # each block once
        assert sorted(n for n in ran if n in every_cva) == sorted(cva), index  # each CVA module once


@torch.no_grad()
def test_the_shallow_path_rejoins_the_deep_one_exactly(tiny_pipe):
    """On the same input, a cached step fed the feature its own full step cached is the full UNet, bit for bit."""
    unet, generator = tiny_pipe.unet, torch.Generator().manual_seed(0)
    sample_, context = torch.randn(2, 9, 16, 16, generator=generator), torch.randn(2, 259, 32, generator=generator)
    pose, timestep = torch.randn(2, 32, 16, 16, generator=generator), torch.tensor([500.0])
    reference = unet(sample_, timestep, context, pose, grid=(2, 2), return_dict=False)[0]
    for branch in range(unet.num_skip_branches):
        prediction, feature = unet.forward_deepcache_full(sample_, timestep, context, pose, (2, 2), branch)
        channels, downscale = unet.deepcache_feature(branch)
        assert feature.shape == (2, channels, 16 // downscale, 16 // downscale), branch
        assert torch.equal(prediction, reference), branch
        shallow = unet.forward_deepcache_shallow(sample_, timestep, context, pose, feature, (2, 2), branch)
        assert torch.equal(shallow, reference), branch


def test_interval_1_is_the_plain_pipeline_bit_for_bit(tiny_pipe):
    plain, _ = traced_run(tiny_pipe, 3)
    cached, steps = traced_run(tiny_pipe, 3, deepcache_interval=1, deepcache_branch=2)
    assert all("mid_block" in ran for _, ran in steps) and torch.equal(cached, plain)
    other, _ = traced_run(tiny_pipe, 3, deepcache_interval=2, deepcache_branch=2)
    assert not torch.equal(other, plain)  # caching does change the result


@pytest.mark.parametrize("interval, rows, full", [
    ((0.5, 1.0), [1, 1, 2, 2], [0, 2]),  # step 2 is guided, no uncond rows cached: a full step
    ((0.0, 0.5), [2, 2, 1, 1], [0, 3]),  # step 2 reuses the cond rows of step 0; step 3 is 3 steps on
])
def test_the_cache_keeps_each_guidance_half_across_a_guidance_interval(tiny_pipe, interval, rows, full):
    _, steps = traced_run(tiny_pipe, 4, guidance_interval=interval, deepcache_interval=3, deepcache_branch=1)
    assert [r for r, _ in steps] == rows
    assert [i for i, (_, ran) in enumerate(steps) if "mid_block" in ran] == full


@pytest.mark.parametrize("settings, message", [
    (dict(deepcache_interval=0), "deepcache_interval must be an integer >= 1, got 0"),
    (dict(deepcache_interval=2.5), "deepcache_interval must be an integer >= 1, got 2.5"),
    (dict(deepcache_interval=True), "deepcache_interval must be an integer >= 1, got True"),
    (dict(deepcache_interval=3, deepcache_branch=-1), "deepcache_branch must be an integer >= 0, got -1"),
    (dict(deepcache_interval=3, deepcache_branch=6), "deepcache_branch 6 is beyond this UNet's skip branches 0..5"),
    (dict(deepcache_branch=1), "deepcache_branch 1 applies with deepcache_interval"),
])
def test_bad_settings_are_user_errors(tiny_pipe, settings, message):
    with pytest.raises(InvalidArgumentError, match=message):
        tiny_pipe(request(), num_inference_steps=2, progress=False, **settings)


def test_a_runtime_without_deepcache_is_a_user_error(tiny_pipe):
    class PlainRuntime:  # the six Runtime methods only
        name = "plain"

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, method):
            if method.startswith("unet_deepcache"):
                raise AttributeError(method)
            return getattr(self.inner, method)

    backend = PlainRuntime(tiny_pipe.torch_runtime())
    assert tiny_pipe(request(), num_inference_steps=1, output_type="latent", progress=False, runtime=backend)
    with pytest.raises(InvalidArgumentError, match="plain runtime cannot run DeepCache steps"):
        tiny_pipe(request(), num_inference_steps=2, deepcache_interval=2, progress=False, runtime=backend)


def test_cva_modules_are_counted(tiny_pipe):
    """The hooks above see every CVA module: the tiny UNet has one after each of its 3 + 1 + 6 layers."""
    assert len([m for m in tiny_pipe.unet.modules() if isinstance(m, CrossViewAttention)]) == 10


def test_the_command_line_takes_deepcache(generate_argv, tmp_path, capsys):
    from imagpose.cli import main

    for name, extra in (("plain", []), ("cached", ["--deepcache", "2:0"])):
        assert main([*generate_argv, "--steps", "3", *extra, "--out", str(tmp_path / name)]) == 0
    target = "target_tile3.png"  # step 1 reuses step 0's deep feature: the image changes
    assert (tmp_path / "plain" / target).read_bytes() != (tmp_path / "cached" / target).read_bytes()
    for bad in ("1", "2:-1", "x", "2:1:0"):
        with pytest.raises(SystemExit) as exit_info:
            main([*generate_argv, "--deepcache", bad, "--out", str(tmp_path / "bad")])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert "--deepcache" in error and "INTERVAL[:BRANCH]" in error, error
    assert main([*generate_argv, "--deepcache", "2:99", "--out", str(tmp_path / "deep")]) == 2  # beyond the UNet
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "branch" in error[0], error
