"""SamplingConfig: one checked, frozen set of sampling settings whose defaults every entry point shares; the
pipeline's keyword arguments and ``sampling=`` are the same call; assigning a scheduler selects its sampler."""

import argparse
import math

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler

from imagpose import DeepCacheConfig, SamplingConfig, scenarios
from imagpose.bench.quality import DEFAULT
from imagpose.cli import generate as generate_command
from imagpose.cli import loadtest as loadtest_command
from imagpose.cli.common import sampling_from_args
from imagpose.errors import InvalidArgumentError
from imagpose.samplers import SAMPLERS
from imagpose.samples import sample
from imagpose.sdk import IMAGPoseGenerator
from imagpose.serving.wire import request_from_json, request_to_json


def request():
    return scenarios.t2(*sample("person_red_front"), sample("person_red_walking")[1], tile_size=(64, 64), seed=0)


@pytest.mark.parametrize("fields, words", [
    (dict(num_inference_steps=0), "num_inference_steps must be in [1, 1000]"),
    (dict(num_inference_steps=1001), "num_inference_steps must be in [1, 1000]"),
    (dict(num_inference_steps=2.0), "num_inference_steps must be an integer"),
    (dict(num_inference_steps=True), "num_inference_steps must be an integer"),
    (dict(guidance_scale="2"), "guidance_scale must be a number"),
    (dict(guidance_scale=-0.5), "guidance_scale must be a finite number >= 0"),
    (dict(guidance_scale=math.nan), "guidance_scale must be a finite number >= 0"),
    (dict(guidance_scale=math.inf), "guidance_scale must be a finite number >= 0"),
    (dict(eta=1.5), "eta must be a finite number in [0, 1]"),
    (dict(eta=math.nan), "eta must be a finite number in [0, 1]"),
    (dict(sampler="euler"), "Unknown sampler 'euler'; choose one of ddim, dpmsolver++, unipc"),
    (dict(sampler="unipc", eta=0.5), "eta applies to the ddim and tcd samplers only"),
    (dict(guidance_interval=(0.8, 0.2)), "guidance_interval (0.8, 0.2) is empty or inverted"),
    (dict(guidance_interval="early"), "guidance_interval must be a pair"),
    (dict(guidance_interval=(0.0, 0.5), guidance_scale=1.0), "guidance_scale 1.0 <= 1 turns off"),
    (dict(guidance_interval=(0.0, 0.1), num_inference_steps=4), "covers none of the 4 steps"),
    (dict(deepcache=(3, 0)), "deepcache must be a DeepCacheConfig"),
])
def test_each_bad_setting_is_refused_naming_it(fields, words):
    with pytest.raises(InvalidArgumentError) as info:
        SamplingConfig(**fields)
    assert words in str(info.value)


def test_a_deepcache_config_checks_itself():
    with pytest.raises(InvalidArgumentError, match="deepcache_interval must be an integer >= 1, got 0"):
        DeepCacheConfig(0)
    with pytest.raises(InvalidArgumentError, match="deepcache_branch must be an integer >= 0, got -1"):
        DeepCacheConfig(2, -1)


def test_a_config_is_frozen_and_replace_checks_the_copy():
    config = SamplingConfig(guidance_scale=3)
    assert config.guidance_scale == 3.0 and isinstance(config.guidance_scale, float)
    with pytest.raises(AttributeError):
        config.guidance_scale = 1.0
    assert config.replace(num_inference_steps=4) == SamplingConfig(num_inference_steps=4, guidance_scale=3.0)
    with pytest.raises(InvalidArgumentError, match="num_inference_steps"):
        config.replace(num_inference_steps=0)
    assert len({SamplingConfig(), SamplingConfig(guidance_scale=2), SamplingConfig(eta=0)}) == 1  # one group


def test_to_dict_and_from_dict_round_trip_with_deepcache():
    config = SamplingConfig(6, 1.5, "ddim", 0.3, (0.0, 0.5), DeepCacheConfig(3, 1))
    data = config.to_dict()
    assert data == {"num_inference_steps": 6, "guidance_scale": 1.5, "sampler": "ddim", "eta": 0.3,
                    "guidance_interval": [0.0, 0.5], "deepcache": {"interval": 3, "branch": 1}}
    assert SamplingConfig.from_dict(data) == config
    assert SamplingConfig.from_dict({}) == SamplingConfig()
    with pytest.raises(InvalidArgumentError, match=r"sampling settings has unknown keys \['steps'\]"):
        SamplingConfig.from_dict({"steps": 4})
    with pytest.raises(InvalidArgumentError, match=r"deepcache has unknown keys \['every'\]"):
        SamplingConfig.from_dict({"deepcache": {"every": 3}})


def test_the_defaults_are_defined_once(tiny_pipe):
    defaults = SamplingConfig()
    assert (defaults.num_inference_steps, defaults.guidance_scale, defaults.sampler, defaults.eta) == (20, 2.0,
                                                                                                       "ddim", 0.0)
    assert tiny_pipe.sampling_config() == defaults
    with IMAGPoseGenerator(tiny_pipe) as generator:
        assert generator.sampling == defaults
    for command in (generate_command, loadtest_command):
        parser = argparse.ArgumentParser()
        command.add_arguments(parser)
        actions = {action.dest: action for action in parser._actions}
        assert actions["sampler"].choices == SAMPLERS
        if command is generate_command:  # left out: the model's defaults (the paper's or a distilled student's)
            assert all(actions[name].default is None for name in ("steps", "guidance", "sampler", "eta"))
        else:  # the load test states every request's sampling
            assert (actions["sampler"].default, actions["guidance"].default) == (defaults.sampler,
                                                                                 defaults.guidance_scale)
    args = argparse.ArgumentParser()
    generate_command.add_arguments(args)
    parsed = args.parse_args(["--source", "a.png", "a.json", "--target", "b.json"])
    assert sampling_from_args(parsed) == defaults
    wire = request_to_json(request())
    del wire["settings"]
    assert request_from_json(wire).sampling(tiny_pipe) == defaults
    assert DEFAULT.sampling == defaults


def test_keyword_arguments_and_sampling_are_one_call(tiny_pipe):
    config = SamplingConfig(3, sampler="unipc", guidance_interval=(0.0, 0.7), deepcache=DeepCacheConfig(2, 1))
    assert tiny_pipe.sampling_config(num_inference_steps=3, sampler="unipc", guidance_interval=(0.0, 0.7),
                                     deepcache_interval=2, deepcache_branch=1) == config
    # given keyword arguments replace the fields of sampling; the others keep its values
    assert tiny_pipe.sampling_config(config, num_inference_steps=5, deepcache_branch=0) == config.replace(
        num_inference_steps=5, deepcache=DeepCacheConfig(2, 0))
    by_keywords = tiny_pipe(request(), num_inference_steps=3, sampler="unipc", deepcache_interval=2,
                            output_type="latent", progress=False).results[0]
    by_config = tiny_pipe(request(), sampling=SamplingConfig(3, sampler="unipc", deepcache=DeepCacheConfig(2)),
                          output_type="latent", progress=False).results[0]
    assert torch.equal(by_keywords.latents, by_config.latents)
    with pytest.raises(InvalidArgumentError, match="sampling must be an imagpose.SamplingConfig"):
        tiny_pipe(request(), sampling={"num_inference_steps": 3}, progress=False)
    with pytest.raises(InvalidArgumentError, match="deepcache_branch 6 is beyond this UNet's skip branches 0..5"):
        tiny_pipe(request(), sampling=SamplingConfig(2, deepcache=DeepCacheConfig(2, 6)), progress=False)


def test_assigning_a_supported_scheduler_selects_its_sampler():
    from imagpose import build_pipeline

    pipe = build_pipeline("tiny", seed=0)
    expected = pipe(request(), num_inference_steps=3, sampler="unipc", output_type="latent",
                    progress=False).results[0]
    assert pipe.sampler == "ddim"
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    assert pipe.sampler == "unipc" and pipe.sampling_config().sampler == "unipc"
    result = pipe(request(), num_inference_steps=3, output_type="latent", progress=False).results[0]
    assert torch.equal(result.latents, expected.latents)
    # a call that names its sampler still gets it
    ddim = pipe(request(), num_inference_steps=3, sampler="ddim", output_type="latent", progress=False).results[0]
    assert not torch.equal(ddim.latents, expected.latents)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    assert pipe.sampler == "dpmsolver++"


def test_assigning_an_unsupported_scheduler_is_refused_naming_the_supported_ones(tiny_pipe):
    with pytest.raises(InvalidArgumentError) as info:
        tiny_pipe.scheduler = EulerDiscreteScheduler.from_config(tiny_pipe.scheduler.config)
    message = str(info.value)
    assert "cannot sample with EulerDiscreteScheduler" in message
    assert all(name in message for name in ("IMAGPoseDDIMScheduler", "DPMSolverMultistepScheduler",
                                            "UniPCMultistepScheduler"))
    with pytest.raises(InvalidArgumentError, match="dpmsolver\\+\\+ sampler runs DPMSolverMultistepScheduler with"):
        tiny_pipe.scheduler = DPMSolverMultistepScheduler.from_config(tiny_pipe.scheduler.config, solver_order=3)
    assert tiny_pipe.sampler == "ddim"  # the refused schedulers were not assigned
