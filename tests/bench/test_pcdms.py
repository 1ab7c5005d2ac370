"""PCDMs baseline (bench/baselines/pcdms.py): sizes and FLOPs of the released networks (meta device) against
baselines.md section 3, the whole three-stage pipeline's FLOPs, and a reduced-size CPU generation through the
benchmark interface (stage names, loop extrapolation, batched CFG per step)."""

import dataclasses

import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

# via the installed package: `imagpose` imports transformers before diffusers does; a bare `bench` import with the
# repo root on sys.path lets the repo's `kernels/` shadow HF `kernels` inside transformers (a circular import)
from imagpose.bench.baselines.pcdms import PCDMs, best_candidate, ssim
from imagpose.bench.meter import FlopMeter, TimeMeter

# baselines.md section 3: parameters (M) of the parts besides the two UNets (those are info.expected_params):
# prior 1027 M, DINOv2-G 1.14 B, ViT-H about 632 M; the SD VAE (0.08 B there) is 83.65 M
OTHER_PARAMS = {"prior": 1027.0, "dinov2": 1140.0, "clip_vision": 632.0, "vae": 83.65}
# baselines.md section 3 "Whole pipeline": TFLOP per kept image, 1 candidate (≈121, with DINOv2 twice and the ViT-bigG
# zero-embed) and as released with 4 candidates (≈460, a rounded estimate: hence 3 %); ViT-bigG at 224²: 0.968
PIPELINE_TFLOPS = {1: (121.0, 0.02), 4: (460.0, 0.03)}
ZERO_EMBED_TFLOPS = 0.968
STAGES = ["encoders", "stage1.denoiser", "stage2.vae_encode", "stage2.denoiser", "stage2.vae_decode",
          "stage3.vae_encode", "stage3.denoiser", "stage3.vae_decode"]


@pytest.fixture(scope="module")
def full():
    with torch.device("meta"):
        return PCDMs("full", zero_embed=True)


@pytest.fixture(scope="module")
def reduced():
    torch.manual_seed(0)
    return PCDMs("reduced").eval()



def test_params_full(full):
    counts = {name: sum(p.numel() for p in part.parameters()) / 1e6 for name, part in full.param_groups().items()}
    expected = {**OTHER_PARAMS, **full.info.expected_params}
    for name, value in counts.items():
        print(f"{name:12s} {value:9.3f} M  expected {expected.get(name, '-')}")
    for name, target in expected.items():
        assert abs(counts[name] - target) / target < 0.01, (name, counts[name], target)


def test_flops_full(full):
    checks = full.flop_checks("meta")
    for name, value in checks.items():
        print(f"{name:16s} {value:.4f} TFLOP  expected {full.info.expected_tflops[name]}")
    assert checks.keys() == full.info.expected_tflops.keys()
    for name, target in full.info.expected_tflops.items():
        assert abs(checks[name] - target) / target < 0.02, (name, checks[name], target)


@pytest.mark.parametrize("candidates", [1, 4])
def test_pipeline_flops_full(full, candidates):
    setting = dataclasses.replace(full.info.released, candidates=candidates)
    inputs = full.example_inputs(1, setting, "meta", torch.float32)
    with FlopMeter(loop_limit=1) as meter:
        images = full.generate(inputs, setting, meter)
    assert images.shape == (1, 3, *setting.resolution)
    for record in meter.stages.values():
        print(f"{record.name:18s} x{record.repeat or 1:<3d} {record.per_generation / 1e12:8.3f} TFLOP")
    total = meter.total() / 1e12
    target, tolerance = PIPELINE_TFLOPS[candidates]
    print(f"total {total:.2f} TFLOP per kept image ({candidates} candidates), baselines.md ≈{target}")
    assert list(meter.stages) == ["encoders", "stage1.zero_embed", *STAGES[1:]]
    checks = full.flop_checks("meta")
    for stage in ("stage2", "stage3"):
        record = meter.stages[f"{stage}.denoiser"]
        assert (record.repeat, record.executed) == (20, 1)
        assert record.per_run / 1e12 == pytest.approx(candidates * checks[f"{stage}_cfg_step"], rel=1e-3)
    assert meter.stages["stage1.zero_embed"].per_run / 1e12 == pytest.approx(ZERO_EMBED_TFLOPS, rel=0.02)
    assert abs(total - target) / target < tolerance


@pytest.mark.parametrize("batch,candidates", [(2, 1), (1, 2)])
def test_generate_reduced_cpu(reduced, one_thread, batch, candidates):
    setting = dataclasses.replace(reduced.info.released, resolution=(64, 64), candidates=candidates)
    calls = {"prior": [], "stage2_unet": [], "stage3_unet": []}
    hooks = [getattr(reduced, name).register_forward_hook(
        lambda _module, args, _output, name=name: calls[name].append(args[0].shape[0])) for name in calls]
    generator = torch.Generator().manual_seed(0)
    inputs = reduced.example_inputs(batch, setting, "cpu", torch.float32, generator)
    meter = TimeMeter(loop_limit=2)
    try:
        images = reduced.generate(inputs, setting, meter, generator)
    finally:
        for hook in hooks:
            hook.remove()
    for record in meter.stages.values():
        print(f"{record.name:18s} repeat {record.repeat} executed {record.executed}  {record.per_run:.3f} s/run")
    print("network calls (batch per call):", calls)
    assert images.shape == (batch, 3, 64, 64)
    assert torch.isfinite(images).all()
    assert list(meter.stages) == STAGES
    for name in ("stage1.denoiser", "stage2.denoiser", "stage3.denoiser"):
        assert (meter.stages[name].repeat, meter.stages[name].executed) == (20, 2)
    assert calls["prior"] == [batch] * 2  # no CFG: one prior evaluation per step
    assert calls["stage2_unet"] == [2 * batch * candidates] * 2  # batched CFG over every candidate, once per step
    assert calls["stage3_unet"] == [2 * batch * candidates] * 2


def test_pose_features_added_after_conv_in(reduced, one_thread):
    unet = reduced.stage2_unet
    sample, context = torch.randn(1, 9, 8, 8), torch.randn(1, 5, reduced.config.embed_dim)
    labels = torch.randn(1, reduced.config.embed_dim)
    pose = torch.zeros(1, unet.config.block_out_channels[0], 8, 8)
    with torch.no_grad():
        outputs = [unet(sample, torch.tensor(500), context, class_labels=labels, pose_features=pose + value).sample
                   for value in (0.0, 1.0)]
    print("max |out(pose=1) - out(pose=0)|:", (outputs[1] - outputs[0]).abs().max().item())
    assert not torch.allclose(outputs[0], outputs[1])
    assert not unet.conv_in._forward_hooks  # the hook lives only for the call


def test_released_precision_meta():
    with torch.device("meta"):
        method = PCDMs("reduced", candidates=2).released_precision()
    dtypes = {name: next(part.parameters()).dtype for name, part in method.param_groups().items()}
    print(dtypes)
    assert dtypes.pop("stage2_unet") == dtypes.pop("vae") == torch.float16
    assert set(dtypes.values()) == {torch.float32}
    setting = dataclasses.replace(method.info.released, resolution=(64, 64))
    inputs = method.example_inputs(1, setting, "meta", torch.float16)
    images = method.generate(inputs, setting, TimeMeter(loop_limit=1))  # mixed fp16/fp32 plumbing, shapes only
    assert images.shape == (1, 3, 64, 64)


def _skimage_rule_ssim(x, y, sigma=1.2):
    """The released selection's SSIM written out in float64: 9x9 Gaussian window (skimage: truncate 3.5),
    population covariance, data range 1, mean over the pixels whose window lies inside the image."""
    coords = torch.arange(-4, 5, dtype=torch.float64)
    gauss = torch.exp(-coords**2 / (2 * sigma**2))
    gauss = gauss / gauss.sum()
    window = (gauss[:, None] * gauss[None, :]).expand(3, 1, 9, 9)
    x, y = x.double(), y.double()

    def blur(t):
        return torch.nn.functional.conv2d(t, window, groups=3)  # valid windows only: the border is left out

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    score = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return score.mean(dim=(1, 2, 3))


def test_ssim_is_the_released_selection_rule():
    generator = torch.Generator().manual_seed(0)
    reference = torch.rand(1, 3, 40, 56, generator=generator)
    candidates = (reference + 0.2 * torch.randn(4, 3, 40, 56, generator=generator)).clamp(0, 1)
    ours, expected = ssim(candidates, reference.expand(4, -1, -1, -1)), _skimage_rule_ssim(candidates, reference)
    uncropped = structural_similarity_index_measure(candidates, reference.expand(4, -1, -1, -1), gaussian_kernel=True,
                                                    sigma=1.2, kernel_size=9, data_range=1.0, reduction="none")
    print("ours", ours.tolist(), "float64 rule", expected.tolist(), "torchmetrics' own mean", uncropped.tolist())
    assert torch.allclose(ours.double(), expected, atol=1e-5)
    assert not torch.allclose(uncropped.double(), expected, atol=1e-3)  # its mean includes the border windows
    assert torch.equal(best_candidate(candidates, reference, 4), candidates[expected.argmax()][None])

