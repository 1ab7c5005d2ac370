import json
import os

import pytest
import torch

from imagpose.convert import (
    ConversionError,
    convert_flc,
    convert_official_checkpoints,
    convert_pose_guider,
    convert_unet,
    unet_config_from_official,
)
from imagpose.io import WeightsFileError, load_state_dict_file
from imagpose.presets import build_components, get_preset

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def tiny_state():
    comps = build_components("tiny", seed=3)
    return {name: comps[name].state_dict() for name in ("unet", "pose_guider", "flc_tokenizer")}


def _save_pth(state, path):
    torch.save(state, path)
    return path


def test_official_pth_roundtrip_fp16(tiny_state, tmp_path):
    half = {k: v.half() for k, v in tiny_state["unet"].items()}
    unet, report = convert_unet(_save_pth(half, tmp_path / "denoising_unet-50001.pth"), dict(TINY.unet))
    assert report.dtypes == ["float16"] and not report.dropped and not report.notes
    for key, value in unet.state_dict().items():
        assert torch.equal(value, half[key].float()), key


def test_pre_pr10_input_convs_are_mapped_and_reported(tiny_state):
    state = dict(tiny_state["unet"])
    weight, bias = state.pop("conv_in.weight"), state.pop("conv_in.bias")
    state.update({"conv3d_in.weight": weight, "conv3d_in.bias": bias,
                  "conv2d_in.weight": torch.zeros_like(weight), "conv2d_in.bias": torch.zeros_like(bias)})
    unet, report = convert_unet(state, dict(TINY.unet))
    assert torch.equal(unet.conv_in.weight, weight)
    assert ("conv3d_in.weight", "conv_in.weight") in report.renamed
    assert {k for k, _ in report.dropped} == {"conv2d_in.weight", "conv2d_in.bias"}


def test_stage1_and_pre_fix_checkpoints_change_the_architecture(tiny_state):
    state = {k: v for k, v in tiny_state["unet"].items()
             if ".motion_modules." not in k and not k.startswith("conv_norm_out.")}
    unet, report = convert_unet(state, dict(TINY.unet))
    assert unet.cva_modules() == [] and unet.conv_norm_out is None
    assert len(report.notes) == 2


@pytest.mark.parametrize("mutate, match", [
    (lambda s: s.pop("down_blocks.0.resnets.0.conv1.weight"), "missing key 'down_blocks.0.resnets.0.conv1.weight'"),
    (lambda s: s.update({"extra.weight": torch.zeros(1)}), "unexpected key 'extra.weight'"),
    (lambda s: s.update({"conv_out.weight": torch.zeros(4, 32, 1, 1)}), "shape mismatch at 'conv_out.weight'"),
])
def test_bad_checkpoints_name_the_first_bad_key(tiny_state, mutate, match):
    state = dict(tiny_state["unet"])
    mutate(state)
    with pytest.raises(ConversionError, match=match):
        convert_unet(state, dict(TINY.unet))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickles_with_arbitrary_objects_are_refused(tmp_path):
    path = tmp_path / "patch-1.pth"
    torch.save({"proj.weight": torch.zeros(1), "payload": _Evil()}, path)
    with pytest.raises(WeightsFileError, match="arbitrary Python objects.*(?i:global)"):
        load_state_dict_file(path)
    corrupt = tmp_path / "pose_guider-1.pth"
    corrupt.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(WeightsFileError, match="not a readable"):
        load_state_dict_file(corrupt)
    with pytest.raises(WeightsFileError, match="not found"):
        load_state_dict_file(tmp_path / "nope.pth")


def test_wrappers_are_unwrapped(tiny_state, tmp_path):
    path = _save_pth({"module": tiny_state["flc_tokenizer"]}, tmp_path / "patch.pth")
    flc, _ = convert_flc(path, dict(TINY.flc))
    assert torch.equal(flc.proj.weight, tiny_state["flc_tokenizer"]["proj.weight"])


def test_convert_writes_component_folders_atomically(tiny_state, tmp_path):
    unet = _save_pth(tiny_state["unet"], tmp_path / "denoising_unet-1.pth")
    pose = _save_pth(tiny_state["pose_guider"], tmp_path / "pose_guider-1.pth")
    patch = _save_pth(tiny_state["flc_tokenizer"], tmp_path / "patch-1.pth")
    out = tmp_path / "converted"
    reports = convert_official_checkpoints(out, unet=unet, pose_guider=pose, patch=patch, preset="tiny")
    assert [r.component for r in reports] == ["unet", "pose_guider", "flc_tokenizer"]
    assert sorted(p.name for p in out.iterdir()) == ["flc_tokenizer", "pose_guider", "unet"]
    bad = dict(tiny_state["pose_guider"])
    bad.pop("conv_out.bias")
    failed = tmp_path / "failed"
    with pytest.raises(ConversionError, match="conv_out.bias"):
        convert_official_checkpoints(failed, unet=unet, pose_guider=_save_pth(bad, tmp_path / "bad.pth"),
                                     preset="tiny")
    assert not failed.exists()  # nothing half-written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".failed")]
    convert_official_checkpoints(tmp_path, patch=patch, preset="tiny")  # written beside the files already there
    assert unet.is_file() and (tmp_path / "flc_tokenizer" / "config.json").is_file()


def test_official_config_mapping_follows_the_official_cva_rule():
    official = {"block_out_channels": [32, 64], "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
                "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"], "attention_head_dim": 4,
                "use_motion_module": True, "motion_module_resolutions": [1, 2],
                "motion_module_mid_block": False, "motion_module_kwargs": {"num_attention_heads": 8}}
    cfg = unet_config_from_official(official)
    assert cfg["cva_down_blocks"] == [True, True]
    assert cfg["cva_up_blocks"] == [False, False]  # up block i uses 2**(3 - i): 8 and 4 are not listed
    assert cfg["cva_mid_block"] is False
    with pytest.raises(ConversionError, match="dual_cross_attention"):
        unet_config_from_official({**official, "dual_cross_attention": True})


def test_pose_guider_conversion_checks_shapes(tiny_state):
    with pytest.raises(ConversionError, match="shape mismatch"):
        convert_pose_guider(tiny_state["pose_guider"], dict(get_preset("sd15").pose_guider))


def test_convert_cli(tiny_state, tmp_path):
    from imagpose.cli import main

    unet = _save_pth(tiny_state["unet"], tmp_path / "motion_module-200001.pth")
    config = tmp_path / "official.json"
    assert main(["convert", "--unet", str(unet), "--preset", "tiny", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "unet" / "config.json").is_file()
    config.write_text(json.dumps({"block_out_channels": [1]}))
    assert main(["convert", "--unet", str(unet), "--unet-config", str(config), "--out", str(tmp_path / "p")]) == 2


KL_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 16, 32, 32],
              down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
              layers_per_block=1, norm_num_groups=2, act_fn="silu", sample_size=64, scaling_factor=0.18215)


@pytest.mark.parametrize("vae_class", ["AutoencoderTiny", "AutoencoderKL"])
def test_convert_to_a_complete_pipeline_folder(tiny_state, tmp_path, samples, vae_class):
    """--vae takes either autoencoder class: SD's AutoencoderKL, or a TAESD-style AutoencoderTiny."""
    from diffusers import AutoencoderKL

    from imagpose import IMAGPosePipeline, scenarios

    comps = build_components("tiny", seed=3)
    vae = comps["vae"] if vae_class == "AutoencoderTiny" else AutoencoderKL(**KL_VAE)
    assert type(vae).__name__ == vae_class
    vae.save_pretrained(tmp_path / "vae")
    comps["image_encoder"].save_pretrained(tmp_path / "dino")
    files = {name: _save_pth(tiny_state[key], tmp_path / f"{name}-1.pth")
             for name, key in (("unet", "unet"), ("pose_guider", "pose_guider"), ("patch", "flc_tokenizer"))}
    with pytest.raises(ConversionError, match="complete pipeline needs"):
        convert_official_checkpoints(tmp_path / "p", unet=files["unet"], vae=tmp_path / "vae", preset="tiny")
    convert_official_checkpoints(tmp_path / "pipe", **files, preset="tiny", vae=tmp_path / "vae",
                                 image_encoder=tmp_path / "dino")
    pipe = IMAGPosePipeline.from_pretrained(tmp_path / "pipe")
    assert torch.equal(pipe.unet.conv_in.weight, tiny_state["unet"]["conv_in.weight"])
    assert type(pipe.vae).__name__ == vae_class
    request = scenarios.t2(*samples("person_red_front"), samples("person_red_walking")[1], tile_size=(64, 64))
    assert pipe(request, num_inference_steps=1, progress=False).results[0].targets[0].size == (64, 64)


def test_convert_refuses_an_autoencoder_of_another_latent_space(tiny_state, tmp_path):
    from diffusers import AutoencoderKL

    AutoencoderKL(**dict(KL_VAE, latent_channels=16)).save_pretrained(tmp_path / "vae16")
    build_components("tiny")["image_encoder"].save_pretrained(tmp_path / "dino")
    files = {name: _save_pth(tiny_state[key], tmp_path / f"{name}-1.pth")
             for name, key in (("unet", "unet"), ("pose_guider", "pose_guider"), ("patch", "flc_tokenizer"))}
    with pytest.raises(ConversionError, match="16 latent channels and a 8x downscale; IMAGPose's UNet needs"):
        convert_official_checkpoints(tmp_path / "p", **files, preset="tiny", vae=tmp_path / "vae16",
                                     image_encoder=tmp_path / "dino")
    assert not (tmp_path / "p").exists()
