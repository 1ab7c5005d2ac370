"""PoCoLD baseline (bench/baselines/pocold.py): sizes, FLOPs and the released inference loop.

Full-size networks are only built on the meta device; the loop itself runs on CPU with the reduced networks.
"""

import dataclasses

import pytest
import torch

from imagpose.bench.baselines.pocold import SD15_PNDM, DoubleAttention, PoCoLD, pndm_rounds
from imagpose.bench.meter import FlopMeter, TimeMeter

INFO = PoCoLD.info


@pytest.fixture(scope="module")
def full_meta():
    with torch.device("meta"):
        return PoCoLD("full")


@pytest.fixture(scope="module")
def reduced_cpu():
    torch.manual_seed(0)
    return PoCoLD("reduced").eval()


def test_params_full(full_meta):
    groups = full_meta.param_groups()
    counts = {name: sum(p.numel() for p in module.parameters()) / 1e6 for name, module in groups.items()}
    print({k: round(v, 3) for k, v in counts.items()}, "expected", INFO.expected_params)
    for name, expected in INFO.expected_params.items():
        assert abs(counts[name] - expected) / expected < 0.01, (name, counts[name], expected)


def test_flops_full(full_meta):
    tflops = full_meta.flop_checks("meta")
    print({k: round(v, 5) for k, v in tflops.items()}, "expected", INFO.expected_tflops)
    assert set(tflops) == set(INFO.expected_tflops)
    for name, expected in INFO.expected_tflops.items():
        assert abs(tflops[name] - expected) / expected < 0.02, (name, tflops[name], expected)


def test_released_setting():
    s = INFO.released
    print(s)
    assert (s.resolution, s.steps, s.evals_per_step, s.batched_cfg, s.precision, s.scheduler) == (
        (512, 384), 50, 3, False, "fp16", "pndm")
    assert pndm_rounds(50) == 51  # PLMS with skip_prk_steps repeats one timestep
    assert SD15_PNDM["skip_prk_steps"] and SD15_PNDM["steps_offset"] == 1
    assert PoCoLD.guidance(981) == pytest.approx(4.905) and PoCoLD.guidance(401) == 3.0


def test_generate_full_meta_flops(full_meta):
    """The whole loop runs on meta; per-round FLOPs = 2 attention-free + 1 full UNet call."""
    setting = INFO.released
    inputs = full_meta.example_inputs(1, setting, "meta", torch.float16)
    assert inputs["source"].shape == (1, 3, 512, 384) and inputs["densepose"].shape == (1, 25, 64, 48)
    with FlopMeter(loop_limit=1) as meter:
        out = full_meta.generate(inputs, setting, meter)
    stages = {name: (r.repeat, r.executed, r.per_run / 1e12) for name, r in meter.stages.items()}
    print(stages, "total TFLOP per image", meter.total() / 1e12)
    assert out.shape == (1, 3, 512, 384)
    assert list(stages) == ["encoders", "denoiser", "vae_decode"]
    assert stages["denoiser"][:2] == (51, 1)
    expected_round = 2 * INFO.expected_tflops["unet_64x48_no_context"] + INFO.expected_tflops["unet_64x48"]
    assert abs(stages["denoiser"][2] - expected_round) / expected_round < 0.02


def test_generate_reduced_cpu(reduced_cpu):
    model = reduced_cpu
    setting = dataclasses.replace(INFO.released, resolution=(128, 96), precision="fp32")
    batch, rounds = 2, pndm_rounds(setting.steps)
    inputs = model.example_inputs(batch, setting, "cpu", torch.float32, generator=torch.Generator().manual_seed(0))

    # hooks: every UNet call (batch, reference given?) and the DoubleAttention layers it ran
    calls, attn_runs = [], []
    unet_hook = model.unet.register_forward_pre_hook(
        lambda mod, args: calls.append([args[0].shape[0], args[2] is not None, 0]))
    attn_hooks = [m.register_forward_hook(lambda *_: attn_runs.append(len(calls)))
                  for m in model.unet.modules() if isinstance(m, DoubleAttention)]
    try:
        meter = TimeMeter(loop_limit=2)
        out = model.generate(inputs, setting, meter, generator=torch.Generator().manual_seed(1))
    finally:
        unet_hook.remove()
        for h in attn_hooks:
            h.remove()
    for i in attn_runs:
        calls[i - 1][2] += 1
    stages = {name: (r.repeat, r.executed, round(r.per_run, 3)) for name, r in meter.stages.items()}
    print("stages (repeat, executed, s/run):", stages, "\nUNet calls [batch, reference, attention layers]:", calls)

    assert out.shape == (batch, 3, 128, 96) and torch.isfinite(out).all()
    assert list(stages) == ["encoders", "denoiser", "vae_decode"]
    assert stages["denoiser"][:2] == (rounds, 2) and stages["encoders"][:2] == (None, 1)
    n_attn = len(attn_hooks)  # 21: 2 per down level, 1 mid, 3 per up level
    assert n_attn == 21
    per_round = [[batch, False, 0], [batch, False, 0], [batch, True, n_attn]]  # null, cat, all: sequential
    assert calls == per_round * 2


def test_double_attention_fp16_upcast():
    """Scores and softmax in fp32, result in the input dtype; fp16 agrees with fp32."""
    torch.manual_seed(0)
    attn = DoubleAttention(64, 32, num_filters=16, heads=8)
    x, ctx = torch.randn(1, 64, 8, 6), torch.randn(1, 32, 8, 6)
    ref = attn(x, ctx)
    half = attn.half()(x.half(), ctx.half())
    print("fp16 vs fp32 max abs diff", (half.float() - ref).abs().max().item())
    assert half.dtype == torch.float16 and torch.allclose(half.float(), ref, atol=2e-2, rtol=2e-2)
