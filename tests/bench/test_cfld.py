"""CFLD baseline (bench/baselines/cfld.py): sizes and FLOPs of the released networks (meta device) against
docs/reference baselines.md section 2, and a reduced-size CPU generation through the benchmark interface."""

import dataclasses

import pytest
import torch

from imagpose.bench.baselines.cfld import CFLD
from imagpose.bench.meter import FlopMeter, TimeMeter

# baselines.md section 2 [measured on meta]: TFLOP per image of each conditioning network
CONDITIONING_TFLOPS = {"swin": 0.0436, "appearance_encoder": 0.1438, "pose_encoder": 0.0395, "decoder": 0.0044}


@pytest.fixture(scope="module")
def full():
    with torch.device("meta"):
        return CFLD("full")


@pytest.fixture(scope="module")
def reduced():
    torch.manual_seed(0)
    return CFLD("reduced")



def test_params_full(full):
    counts = {name: sum(p.numel() for p in part.parameters()) / 1e6 for name, part in full.param_groups().items()}
    for name, value in counts.items():
        print(f"{name:20s} {value:9.3f} M  expected {full.info.expected_params.get(name, '-')}")
    for name, expected in full.info.expected_params.items():
        assert abs(counts[name] - expected) / expected < 0.01, (name, counts[name], expected)


def test_flops_full(full):
    checks = full.flop_checks("meta")
    conditioning = full.conditioning_flops("meta")
    for name, value in {**checks, **conditioning}.items():
        expected = {**full.info.expected_tflops, **CONDITIONING_TFLOPS}[name]
        print(f"{name:20s} {value:.4f} TFLOP  expected {expected}")
    assert checks.keys() == full.info.expected_tflops.keys()
    for name, expected in full.info.expected_tflops.items():
        assert abs(checks[name] - expected) / expected < 0.02, (name, checks[name], expected)
    for name, expected in CONDITIONING_TFLOPS.items():
        assert abs(conditioning[name] - expected) / expected < 0.02, (name, conditioning[name], expected)


def test_generate_full_meta_flops(full):
    setting = full.info.released
    inputs = full.example_inputs(1, setting, "meta", torch.float32)
    with FlopMeter(loop_limit=1) as meter:
        images = full.generate(inputs, setting, meter)
    stages = {name: (r.repeat, r.executed, r.per_run / 1e12) for name, r in meter.stages.items()}
    print(stages, f"total {meter.total() / 1e12:.1f} TFLOP per image")
    assert images.shape == (1, 3, 512, 512)
    assert list(stages) == ["encoders", "denoiser", "vae_decode"]
    assert stages["denoiser"][:2] == (50, 1)
    unet = full.flop_checks("meta")["unet_64x64_ctx16"]
    assert abs(stages["denoiser"][2] - 3 * unet) / (3 * unet) < 0.01  # batch x3 (uc / down / full), one call
    assert abs(stages["encoders"][2] - sum(CONDITIONING_TFLOPS.values())) / sum(CONDITIONING_TFLOPS.values()) < 0.02


def test_generate_reduced_cpu(reduced, one_thread):
    batch = 1
    setting = dataclasses.replace(reduced.info.released, resolution=(128, 128))  # 16x16 latent
    generator = torch.Generator().manual_seed(0)
    inputs = reduced.example_inputs(batch, setting, "cpu", torch.float32, generator=generator)

    calls = []

    def record(module, args, kwargs):  # before the call: diffusers pops the pose residual list during forward
        n = batch
        context, pose = kwargs["encoder_hidden_states"], kwargs["down_intrablock_additional_residuals"]
        appearance = reduced._slot.residuals  # {up-attention block 3..11: (3B, tokens, C)}
        calls.append({
            "batch": args[0].shape[0],
            "prompt uc==down": torch.equal(context[:n], context[n:2 * n]),
            "pose uc=0, down==full": all(not r[:n].any() and torch.equal(r[n:2 * n], r[2 * n:]) for r in pose),
            "appearance uc=down=0": sorted(appearance) == list(range(3, 12))
            and all(not v[:2 * n].any() and v[2 * n:].any() for v in appearance.values()),
        })

    handle = reduced.unet.register_forward_pre_hook(record, with_kwargs=True)
    meter = TimeMeter(loop_limit=2)
    try:
        images = reduced.generate(inputs, setting, meter, generator=generator)
    finally:
        handle.remove()
    stages = {name: (r.repeat, r.executed, round(r.per_run, 3)) for name, r in meter.stages.items()}
    print(stages, calls, tuple(images.shape))
    assert images.shape == (batch, 3, *setting.resolution)
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert list(stages) == ["encoders", "denoiser", "vae_decode"]
    assert stages["denoiser"][:2] == (50, 2)
    assert stages["encoders"][:2] == stages["vae_decode"][:2] == (None, 1)  # once per generation, not a loop
    assert [c["batch"] for c in calls] == [3 * batch] * 2  # ONE UNet call per step, uc / down / full batched
    assert all(all(v for k, v in c.items() if k != "batch") for c in calls)


def test_resolutions(full, reduced):
    """Any multiple of 32 runs (the benchmark's common 256x192 policy); the released size is unchanged after it."""
    common = dataclasses.replace(full.info.released, resolution=(256, 192), steps=20)
    with FlopMeter(loop_limit=1) as meter:
        images = full.generate(full.example_inputs(1, common, "meta", torch.float32), common, meter)
    print({name: round(r.per_run / 1e12, 4) for name, r in meter.stages.items()})
    assert images.shape == (1, 3, 256, 192)
    assert full.flop_checks("meta") == pytest.approx({"unet_64x64_ctx16": 0.798}, rel=0.02)
    with pytest.raises(ValueError):
        reduced.example_inputs(1, dataclasses.replace(common, resolution=(100, 100)), "cpu", torch.float32)


def test_window_bias_matches_transformers(reduced):
    """At the configured size the Swin bias equals transformers' own relative-position bias for the same table."""
    from transformers.models.swin.modeling_swin import SwinRelativePositionBias

    layer = reduced.swin.layers()[1]  # stage 1, shifted window 8
    ours = layer.attention.relative_position_bias
    reference = SwinRelativePositionBias(ours.relative_position_bias_table.shape[1], (ours.window, ours.window))
    with torch.no_grad():
        ours.relative_position_bias_table.normal_()
        reference.relative_position_bias_table.copy_(ours.relative_position_bias_table)
        layer.window_size = ours.window
        assert torch.equal(ours(), reference())


def test_query_residual_processor(reduced, one_thread):
    """Without residuals the up-block processor equals diffusers' SDPA processor; the residuals change the UNet."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    torch.manual_seed(0)
    attn = reduced.unet.up_blocks[3].attentions[2].transformer_blocks[0].attn2  # up-attention block 11
    hidden, context = torch.randn(2, 256, attn.query_dim), torch.randn(2, 16, reduced.config.ctx_dim)
    with torch.no_grad():
        ours = attn.processor(attn, hidden, encoder_hidden_states=context)
        reference = AttnProcessor2_0()(attn, hidden, encoder_hidden_states=context)
    assert torch.allclose(ours, reference, atol=1e-5)

    h, w = reduced.config.cond_size
    source, pose = torch.rand(1, 3, h, w) * 2 - 1, torch.rand(1, 21, h, w)
    latents = torch.randn(1, 4, reduced.config.resolution[0] // 8, reduced.config.resolution[1] // 8)
    with torch.no_grad():
        prompt, down, up = reduced.encode(source, pose)
        t = torch.tensor(981)
        with_up = reduced.denoise(latents, t, prompt, down, up)
        without_up = reduced.denoise(latents, t, prompt, down, {})
    print("max |eps(up) - eps(no up)|", (with_up - without_up).abs().max().item())
    assert not torch.allclose(with_up, without_up)
