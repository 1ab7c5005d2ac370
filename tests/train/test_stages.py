"""imagpose.train.stages: which parameters each stage trains (tiny, and the official counts at sd15 on meta), that
one optimiser step of each stage learns, and loading an SD1.5-layout UNet, a previous stage and a motion module."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from imagpose.convert import ConversionError
from imagpose.errors import IMAGPoseError, InvalidArgumentError
from imagpose.pipeline import IMAGPosePipeline
from imagpose.presets import build_components, get_preset
from imagpose.train.config import WeightsConfig
from imagpose.train.data import collate
from imagpose.train.loop import trainable_parameters
from imagpose.train.objective import ConditionDropout, draw_objective, training_loss, training_scheduler
from imagpose.train.stages import (
    build_stage,
    build_trainable,
    count_trainable,
    load_motion_module,
    load_pretrained_unet,
)

STAGES = ("stage1", "stage2", "end2end")
MANIFEST = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "manifest_full" / "summary.json"

# Trainable parameters at full size (sd15), as the official code counts them (manifest_full, measured on the
# official models): the stage-1 2D UNet has the 686 non-motion keys of the UNet3D (859,535,364 parameters)
OFFICIAL_UNET_2D = 859_535_364
OFFICIAL_POSE_GUIDER = 1_086_480
OFFICIAL_PATCH = 787_200  # FLC tokenizer, Conv2d(4, 768, 16, stride 16)
OFFICIAL_CVA_PARAMETERS = 453_209_280  # 21 motion modules; with their 1,208,320 `pe` buffers 454,417,600 numbers
OFFICIAL_CVA_BUFFERS = 1_208_320
OFFICIAL_UNET_3D = 1_312_744_644  # parameters (1,313,952,964 numbers with the pe buffers)
OFFICIAL_TRAINABLE = {
    "stage1": 861_409_044,  # UNet 2D + pose guider + patch
    "stage2": 453_209_280,  # the CVA modules only
    "end2end": 1_314_618_324,  # UNet 3D + pose guider + patch
}


def names_requiring_grad(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def is_cva(name: str) -> bool:
    return ".motion_modules." in name


# ----------------------------------------------------------------------------- which parameters train
def test_stage1_has_no_cva_modules_and_trains_unet_pose_guider_and_flc():
    model = build_trainable("stage1", "tiny")
    assert model.unet.cva_modules() == [] and not any(is_cva(k) for k in model.state_dict())
    assert names_requiring_grad(model) == {name for name, _ in model.named_parameters()}
    assert {name.split(".")[0] for name in names_requiring_grad(model)} == {"unet", "pose_guider", "flc_tokenizer"}


def test_stage2_trains_only_the_cva_modules():
    model = build_trainable("stage2", "tiny")
    trained = names_requiring_grad(model)
    cva = {name for name, _ in model.named_parameters() if is_cva(name)}
    assert trained == cva and len(model.unet.cva_modules()) == 3 + 1 + 6  # tiny: down 3x1, mid 1, up 3x2
    assert all(name.startswith("unet.") and ".motion_modules." in name for name in trained)


def test_end2end_trains_everything():
    model = build_trainable("end2end", "tiny")
    assert names_requiring_grad(model) == {name for name, _ in model.named_parameters()}
    assert any(is_cva(name) for name in names_requiring_grad(model))


def test_a_fresh_cva_module_starts_as_the_identity():
    """Fresh CVA modules have a zero proj_out (AnimateDiff's zero_initialize): a new stage 2 starts at stage 1."""
    model = build_trainable("stage2", "tiny")
    for _, cva in model.unet.cva_modules():
        assert (cva.temporal_transformer.proj_out.weight == 0).all()
        assert (cva.temporal_transformer.proj_out.bias == 0).all()


def test_an_unknown_stage_is_an_invalid_argument():
    with pytest.raises(InvalidArgumentError, match="stage3.*stage1, stage2, end2end"):
        build_trainable("stage3", "tiny")


@pytest.mark.parametrize("stage", STAGES)
def test_trainable_parameter_counts_at_sd15_equal_the_official_ones(stage):
    model = build_trainable(stage, "sd15", device="meta")
    assert count_trainable(model) == OFFICIAL_TRAINABLE[stage]
    unet_parameters = sum(p.numel() for p in model.unet.parameters())
    assert unet_parameters == (OFFICIAL_UNET_2D if stage == "stage1" else OFFICIAL_UNET_3D)
    if stage != "stage1":
        cva_buffers = sum(b.numel() for name, b in model.unet.named_buffers() if ".motion_modules." in name)
        assert cva_buffers == OFFICIAL_CVA_BUFFERS
        assert OFFICIAL_CVA_PARAMETERS + OFFICIAL_CVA_BUFFERS == 454_417_600  # the 454.42 M CVA numbers


def test_the_official_counts_are_the_measured_manifest():
    """The integers above are the official models' own (tests/fixtures/official/manifest_full/summary.json)."""
    summary = json.loads(MANIFEST.read_text())
    assert summary["denoising_unet_non_motion"]["parameters"] == OFFICIAL_UNET_2D
    assert summary["denoising_unet_motion_modules"]["parameters"] == OFFICIAL_CVA_PARAMETERS
    assert summary["denoising_unet_motion_modules"]["buffers"] == OFFICIAL_CVA_BUFFERS
    assert summary["denoising_unet"]["parameters"] == OFFICIAL_UNET_3D
    assert summary["pose_guider"]["parameters"] == OFFICIAL_POSE_GUIDER
    assert summary["patch"]["parameters"] == OFFICIAL_PATCH
    assert OFFICIAL_TRAINABLE["stage1"] == OFFICIAL_UNET_2D + OFFICIAL_POSE_GUIDER + OFFICIAL_PATCH
    assert OFFICIAL_TRAINABLE["end2end"] == OFFICIAL_UNET_3D + OFFICIAL_POSE_GUIDER + OFFICIAL_PATCH


def test_the_vae_and_image_encoder_are_frozen():
    models = build_stage("stage1", "tiny", seed=0, weights=WeightsConfig())
    for frozen in (models.vae, models.image_encoder):
        assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training
    assert count_trainable(models.model) == sum(p.numel() for p in models.model.parameters())


# ----------------------------------------------------------------------------- one optimiser step learns
@pytest.fixture(scope="module")
def encoders():
    components = build_components("tiny", seed=0)
    return components["vae"], components["image_encoder"]


@pytest.mark.parametrize("stage", STAGES)
def test_one_adamw_step_of_each_stage_lowers_the_loss_on_its_batch(stage, encoders, sample_dataset, one_thread):
    vae, image_encoder = encoders
    model = build_trainable(stage, "tiny", seed=0)
    batch = collate([sample_dataset[0], sample_dataset[1]])
    draws = draw_objective(torch.Generator().manual_seed(0), 2, (4, 16, 16), ConditionDropout(), 0.05)
    scheduler = training_scheduler()
    frozen_before = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-3)
    before, _ = training_loss(model, vae, image_encoder, scheduler, batch, draws, snr_gamma=5.0)
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after, _ = training_loss(model, vae, image_encoder, scheduler, batch, draws, snr_gamma=5.0)
    assert after < before * 0.99, (stage, before.item(), after.item())
    for name, p in model.named_parameters():  # frozen parameters get no gradient and do not move
        if name in frozen_before:
            assert p.grad is None and torch.equal(p, frozen_before[name]), name
    assert (stage == "stage2") == bool(frozen_before)


# ----------------------------------------------------------------------------- loading weights
# diffusers' UNet2DConditionModel of the SD1.5 layout at the tiny preset's size (attention_head_dim is the head count)
TINY_SD_UNET = dict(sample_size=32, in_channels=4, out_channels=4,
                    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                    block_out_channels=[32, 32, 64], layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
                    attention_head_dim=4)


def save_sd_unet(folder: Path, **changes) -> UNet2DConditionModel:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**TINY_SD_UNET, **changes}).eval()
    unet.save_pretrained(folder)
    return unet


def test_an_sd15_layout_unet_loads_into_stage1_except_the_fresh_9_channel_conv_in(tmp_path):
    theirs = save_sd_unet(tmp_path / "unet")
    model = build_trainable("stage1", "tiny", seed=0)
    fresh_conv_in = model.unet.conv_in.weight.detach().clone()
    load_pretrained_unet(model.unet, tmp_path / "unet", get_preset("tiny"))
    ours, their_state = model.unet.state_dict(), theirs.state_dict()
    assert set(ours) == set(their_state)
    assert torch.equal(ours["conv_in.weight"], fresh_conv_in) and ours["conv_in.weight"].shape[1] == 9
    assert all(torch.equal(ours[key], their_state[key]) for key in their_state if key != "conv_in.weight")
    # the same network: with conv_in's first 4 input channels theirs (the flag and masked latent then do nothing)
    # and no pose features, our UNet computes diffusers' forward
    with torch.no_grad():
        model.unet.conv_in.weight.zero_()
        model.unet.conv_in.weight[:, :4] = theirs.conv_in.weight
        generator = torch.Generator().manual_seed(1)
        latents, context = torch.randn(1, 4, 16, 16, generator=generator), torch.randn(1, 5, 32, generator=generator)
        sample = torch.cat([latents, torch.randn(1, 5, 16, 16, generator=generator)], dim=1)
        pose_features = torch.zeros(1, 32, 16, 16)
        ours_out = model.unet(sample, torch.tensor([500]), context, pose_features, grid=(2, 2), return_dict=False)[0]
        their_out = theirs(latents, torch.tensor([500]), context).sample
    torch.testing.assert_close(ours_out, their_out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("changes, field", [(dict(block_out_channels=[32, 64, 64]), "block_out_channels"),
                                            (dict(cross_attention_dim=48), "cross_attention_dim"),
                                            (dict(use_linear_projection=True), "use_linear_projection")])
def test_a_unet_of_another_architecture_is_a_clear_error(tmp_path, changes, field):
    save_sd_unet(tmp_path / "unet", **changes)
    model = build_trainable("stage1", "tiny")
    with pytest.raises(InvalidArgumentError, match=f"{field}=.*'tiny' preset needs"):
        load_pretrained_unet(model.unet, tmp_path / "unet", get_preset("tiny"))


def test_a_folder_without_unet_weights_is_a_clear_error(tmp_path):
    save_sd_unet(tmp_path / "unet")
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    model = build_trainable("stage1", "tiny")
    with pytest.raises(IMAGPoseError, match="diffusion_pytorch_model"):
        load_pretrained_unet(model.unet, tmp_path / "unet", get_preset("tiny"))


def save_stage1_pipeline(folder: Path) -> IMAGPosePipeline:
    components = build_components("tiny", seed=0)
    stage1 = build_trainable("stage1", "tiny", seed=3)
    components.update(unet=stage1.unet, pose_guider=stage1.pose_guider, flc_tokenizer=stage1.flc_tokenizer)
    pipe = IMAGPosePipeline(**components)
    pipe.save_pretrained(folder)
    return pipe


@pytest.fixture(scope="module")
def stage1_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stage1") / "pipeline"
    return folder, save_stage1_pipeline(folder)


def test_stage2_starts_from_the_stage1_pipeline_with_fresh_cva_modules(stage1_folder):
    folder, stage1 = stage1_folder
    models = build_stage("stage2", "tiny", seed=0, weights=WeightsConfig(), init_from=folder)
    ours = models.model.unet.state_dict()
    for key, value in stage1.unet.state_dict().items():
        assert torch.equal(ours[key], value), key
    assert torch.equal(models.model.pose_guider.conv_in.weight, stage1.pose_guider.conv_in.weight)
    assert names_requiring_grad(models.model) == {n for n, _ in models.model.named_parameters() if is_cva(n)}


def test_stage2_takes_its_cva_modules_from_a_motion_module_file(stage1_folder, tmp_path):
    folder, _ = stage1_folder
    donor = build_trainable("end2end", "tiny", seed=9).unet.state_dict()
    # a full UNet3D file, as the official motion_module.pth: only its motion_modules.* keys are read
    save_file({k: v.contiguous() for k, v in donor.items()}, tmp_path / "mm.safetensors")
    weights = WeightsConfig(motion_module=str(tmp_path / "mm.safetensors"))
    models = build_stage("stage2", "tiny", seed=0, weights=weights, init_from=folder)
    ours = models.model.unet.state_dict()
    assert all(torch.equal(ours[k], donor[k]) for k in donor if ".motion_modules." in k)
    assert not torch.equal(ours["conv_in.weight"], donor["conv_in.weight"])  # from the stage-1 folder


def test_motion_module_files_that_do_not_fit_are_clear_errors(tmp_path):
    unet_state = build_trainable("stage2", "tiny").unet.state_dict()
    cva = {k: v.contiguous() for k, v in unet_state.items() if ".motion_modules." in k}
    missing_key = sorted(cva)[0]
    save_file({k: v for k, v in cva.items() if k != missing_key}, tmp_path / "missing.safetensors")
    with pytest.raises(ConversionError, match=f"lacks the CVA key '{missing_key}'"):
        load_motion_module(tmp_path / "missing.safetensors", unet_state)
    wrong = {**cva, missing_key: torch.zeros(3)}
    save_file(wrong, tmp_path / "shape.safetensors")
    with pytest.raises(ConversionError, match=f"'{missing_key}' has shape \\(3,\\)"):
        load_motion_module(tmp_path / "shape.safetensors", unet_state)
    with pytest.raises(IMAGPoseError, match="absent.safetensors"):
        load_motion_module(tmp_path / "absent.safetensors", unet_state)


def test_stage2_needs_the_stage1_folder(stage1_folder, tmp_path):
    with pytest.raises(InvalidArgumentError, match="stage1 first"):
        build_stage("stage2", "tiny", seed=0, weights=WeightsConfig())
    end2end_like = build_components("tiny", seed=0)  # a UNet with CVA modules is no stage-1 pipeline
    IMAGPosePipeline(**end2end_like).save_pretrained(tmp_path / "cva")
    with pytest.raises(InvalidArgumentError, match="stage1/pipeline"):
        build_stage("stage2", "tiny", seed=0, weights=WeightsConfig(), init_from=tmp_path / "cva")


@pytest.mark.parametrize("groups,warns", [(8, True), (2, False)])
def test_a_vae_folder_that_cannot_reproduce_colour_is_warned_about(tmp_path, groups, warns):
    """Stages train on the given autoencoder's latents; one that erases flat colours is named before training."""
    import warnings

    from diffusers import AutoencoderKL

    from imagpose.train.stages import load_frozen_encoders

    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 16, 32, 32],
                  down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                  layers_per_block=1, norm_num_groups=groups).save_pretrained(tmp_path / "vae")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vae, _ = load_frozen_encoders(get_preset("tiny"), tmp_path / "vae", None)
    messages = [str(w.message) for w in caught if "may not reproduce colour" in str(w.message)]
    assert type(vae) is AutoencoderKL and len(messages) == int(warns), messages


def test_an_autoencoder_path_that_is_a_file_says_so(tmp_path):
    from imagpose.errors import InputFileError
    from imagpose.train.stages import load_frozen_encoders

    (tmp_path / "vae.safetensors").write_bytes(b"weights")
    with pytest.raises(InputFileError, match=r"vae.safetensors is a file; a model folder \(save_pretrained output"):
        load_frozen_encoders(get_preset("tiny"), tmp_path / "vae.safetensors", None)
