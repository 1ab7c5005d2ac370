"""PIDM re-implementation (bench/baselines/pidm.py): sizes and FLOPs against baselines.md, and the inference loop.

Full-size networks are built on the meta device only; the CPU run uses the reduced size at 64x64.
"""

from dataclasses import replace

import pytest
import torch

from imagpose.bench.baselines.pidm import PIDM, ddim_timesteps
from imagpose.bench.meter import FlopMeter, TimeMeter


@pytest.fixture(scope="module")
def meta_pidm():
    with torch.device("meta"):
        return PIDM("full")


@pytest.fixture(scope="module")
def reduced_pidm():
    torch.manual_seed(0)
    return PIDM("reduced")


def test_param_counts_match_public_code(meta_pidm):
    for name, module in meta_pidm.param_groups().items():
        measured = sum(p.numel() for p in module.parameters()) / 1e6
        expected = PIDM.info.expected_params[name]
        print(f"{name}: {measured:.3f} M params (expected {expected} M)")
        assert measured == pytest.approx(expected, rel=0.01)


def test_forward_flops_match_public_code(meta_pidm):
    flops = meta_pidm.flop_checks()
    for name, expected in PIDM.info.expected_tflops.items():
        print(f"{name}: {flops[name]:.4f} TFLOP (expected {expected})")
        assert flops[name] == pytest.approx(expected, rel=0.02)


def test_released_timesteps():
    seq = ddim_timesteps(PIDM.info.released.steps)
    print("DDIM-100:", seq[:3], "...", seq[-3:])
    assert seq == list(range(990, -1, -10))
    assert ddim_timesteps(50)[:2] == [980, 960] and ddim_timesteps(1000)[0] == 999


@pytest.fixture(scope="module")
def cpu_run(reduced_pidm):
    """One reduced-size generation at 64x64 on CPU (2 timed steps), with a hook recording every denoiser call."""
    setting = replace(PIDM.info.released, resolution=(64, 64))
    inputs = reduced_pidm.example_inputs(1, setting, "cpu", torch.float32, generator=torch.Generator().manual_seed(0))
    calls = []  # (input batch, first texture feature, output batch) per denoiser forward
    hook = reduced_pidm.denoiser.register_forward_hook(
        lambda module, args, out: calls.append((args[0].shape[0], args[2][0].clone(), out.shape[0])))
    meter = TimeMeter(loop_limit=2)
    try:
        images = reduced_pidm.generate(inputs, setting, meter, generator=torch.Generator().manual_seed(1))
    finally:
        hook.remove()
    return setting, inputs, meter, images, calls


def test_reduced_generate_on_cpu(cpu_run):
    setting, _, meter, images, _ = cpu_run
    for record in meter.stages.values():
        print(f"{record.name}: repeat {record.repeat}, executed {record.executed}, {record.per_run:.3f} s/run")
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()
    assert set(meter.stages) == {"encoders", "denoiser"}
    assert meter.stages["encoders"].executed == 1
    assert meter.stages["denoiser"].repeat == setting.steps
    assert meter.stages["denoiser"].executed == 2


def test_two_sequential_denoiser_forwards_per_step(reduced_pidm, cpu_run):
    _, inputs, _, _, calls = cpu_run
    batch = inputs["source"].shape[0]
    print("denoiser calls (input batch, output batch):", [(c[0], c[2]) for c in calls])
    assert len(calls) == 2 * 2  # 2 executed steps x (cond, null), none batched together
    assert all(b_in == batch and b_out == batch for b_in, _, b_out in calls)
    with torch.no_grad():
        cond = reduced_pidm.texture_encoder(inputs["source"])[0]
        null = reduced_pidm.texture_encoder(torch.zeros_like(inputs["source"]))[0]
    for step in range(2):  # conditional (source texture) first, then null (all-zero image texture)
        assert torch.equal(calls[2 * step][1], cond) and torch.equal(calls[2 * step + 1][1], null)


def test_flop_meter_full_model_on_meta(meta_pidm):
    setting = PIDM.info.released
    inputs = meta_pidm.example_inputs(1, setting, "meta", torch.float32)
    with FlopMeter(loop_limit=1) as meter:
        images = meta_pidm.generate(inputs, setting, meter)
    step = meter.stages["denoiser"].per_run / 1e12
    encoders = meter.stages["encoders"].per_run / 1e12
    print(f"per step {step:.4f} TFLOP, encoders {encoders:.4f} TFLOP, "
          f"per generation {meter.total() / 1e12:.1f} TFLOP (DDIM-{setting.steps})")
    assert images.shape == (1, 3, 256, 256)
    assert meter.stages["denoiser"].executed == 1 and meter.stages["denoiser"].repeat == setting.steps
    assert step == pytest.approx(2 * PIDM.info.expected_tflops["denoiser_256"], rel=0.02)
    assert encoders == pytest.approx(2 * PIDM.info.expected_tflops["texture_encoder_256"], rel=0.02)
