"""The IMAGPose benchmark method times the pipeline users run (bench/imagpose_method.py): its output and its
network calls are those of ``IMAGPosePipeline.__call__`` on the same requests, the FLOP path (pipeline on the
CPU, networks on meta) makes the same calls with the same shapes, and each call lands in its stage."""

from dataclasses import replace

import pytest
import torch

from imagpose.bench.imagpose_method import RELEASED, IMAGPoseMethod
from imagpose.bench.meter import FlopMeter, Meter, TimeMeter

SETTING = replace(RELEASED, resolution=(64, 64), steps=2, precision="fp32")
ENCODER_CALLS = ["image_encoder", "vae_encode", "flc", "vae_encode", "pose_guider"]  # per request, in order


class CallLog:
    """Wraps a runtime and records every call: (network, argument shapes; non-tensors as they are)."""

    def __init__(self, runtime):
        self.inner, self.name, self.calls = runtime, runtime.name, []

    def __getattr__(self, network):
        run = getattr(self.inner, network)

        def call(*args):
            self.calls.append((network, [tuple(a.shape) if torch.is_tensor(a) else a for a in args]))
            return run(*args)

        return call


@pytest.fixture(scope="module")
def star_method():
    torch.manual_seed(0)
    return IMAGPoseMethod("tiny", stars=True).eval()


def test_generate_is_the_pipeline_call(star_method, one_thread):
    """Same requests: the benchmark's images are the pipeline's, bit for bit, from the same network calls."""
    requests = star_method.example_inputs(2, SETTING)["requests"]
    star_method.backend = timed = CallLog(star_method.pipe.torch_runtime())
    try:
        images = star_method.generate({"requests": requests}, SETTING, Meter())
    finally:
        star_method.backend = None
    direct = CallLog(star_method.pipe.torch_runtime())
    output = star_method.pipe(requests, num_inference_steps=SETTING.steps, output_type="pt", progress=False,
                              runtime=direct)
    expected = torch.stack([target for result in output.results for target in result.targets])
    print("calls:", [name for name, _ in timed.calls])
    assert images.shape == (2 * 3, 3, 64, 64)  # 2 requests x 3 targets (IMAGPose*)
    assert torch.equal(images, expected)
    assert timed.calls == direct.calls
    assert [name for name, _ in timed.calls] == ENCODER_CALLS * 2 + ["unet"] * 2 + ["vae_decode"] * 2


def test_flop_path_makes_the_timed_path_calls(star_method, one_thread):
    """The FLOP count (networks on meta, pipeline on the CPU) goes through the same runtime calls, same shapes."""
    with torch.device("meta"):
        counted = IMAGPoseMethod("tiny", stars=True)
    logs = {}
    for name, method, meter in (("timed", star_method, TimeMeter(loop_limit=1)),
                                ("flops", counted, FlopMeter(loop_limit=1))):
        method.backend = logs[name] = CallLog(method.pipe.torch_runtime())
        inputs = method.example_inputs(2, SETTING)
        try:
            if isinstance(meter, FlopMeter):
                with meter:
                    method.generate(inputs, SETTING, meter)
            else:
                method.generate(inputs, SETTING, meter)
        finally:
            method.backend = None
        if name == "flops":
            print({stage: record.total for stage, record in meter.stages.items()})
            assert all(record.total > 0 for record in meter.stages.values())
    assert logs["timed"].calls == logs["flops"].calls
    assert [name for name, _ in logs["flops"].calls] == ENCODER_CALLS * 2 + ["unet"] + ["vae_decode"] * 2


def test_flop_count_needs_no_memory(monkeypatch):
    """Counting allocates nothing on meta: a memory limit far below the full-size model's needs does not refuse it."""
    monkeypatch.setenv("IMAGPOSE_MAX_MEMORY_GIB", "0.01")
    with torch.device("meta"):
        method = IMAGPoseMethod("full")
    setting = RELEASED
    with FlopMeter(loop_limit=1) as meter:
        method.generate(method.example_inputs(1, setting), setting, meter)
    assert meter.total() / 1e12 == pytest.approx(36.5, rel=0.02)


def test_each_call_lands_in_its_stage(star_method, one_thread):
    """Encoders and decoder sum over the requests; the UNet runs ``loop_limit`` steps, extrapolated to 20."""
    setting = replace(SETTING, steps=20)
    meter = TimeMeter(loop_limit=2)
    star_method.generate(star_method.example_inputs(2, setting), setting, meter)
    stages = meter.stages
    assert list(stages) == ["encoders", "denoiser", "vae_decode"]
    assert (stages["encoders"].executed, stages["encoders"].repeat) == (2 * len(ENCODER_CALLS), None)
    assert (stages["denoiser"].executed, stages["denoiser"].repeat) == (2, 20)
    assert stages["denoiser"].extrapolated and not stages["encoders"].extrapolated
    assert stages["denoiser"].per_generation == pytest.approx(stages["denoiser"].total * 10)
    assert stages["vae_decode"].executed == 2
    assert stages["encoders"].per_generation == stages["encoders"].total  # the sum of its 10 calls
