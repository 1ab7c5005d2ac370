"""imagpose.train.vae: a few steps write a loadable AutoencoderKL folder and a PSNR report; the latent calibration
leaves every reconstruction unchanged."""

import json
import math

import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from imagpose.errors import InputFileError, InvalidArgumentError
from imagpose.presets import get_preset, randomize_weights
from imagpose.train.synthetic import make_dataset
from imagpose.train.vae import (
    calibrate_latent_scale,
    held_out_sets,
    latent_std,
    psnr,
    read_split_images,
    reconstruct,
    rescale_latents,
    train_vae,
)

HELD_OUT_SETS = {"tiles", "canvas", "masked_canvas", "reference"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae") / "data"
    make_dataset(root, 6, seed=0, size=(32, 32), views_per_identity=4, test_fraction=0.34)  # 4 train, 2 test
    return root


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("vae") / "run"
    train_vae(dataset, out, steps=3, batch_size=4, eval_every=2, seed=0, progress=False)
    return out


def random_vae(seed: int = 0) -> AutoencoderKL:
    vae = AutoencoderKL(**get_preset("tiny").vae)
    randomize_weights(vae, torch.Generator().manual_seed(seed))
    return vae.eval()


def test_writes_a_loadable_autoencoder_and_a_psnr_report(dataset, trained):
    vae = AutoencoderKL.from_pretrained(trained).eval()
    assert vae.config.block_out_channels == get_preset("tiny").vae["block_out_channels"]
    assert vae.config.scaling_factor == 0.18215  # the official pipeline's hard-coded factor is kept
    report = json.loads((trained / "vae_report.json").read_text())
    assert set(report["psnr"]) == HELD_OUT_SETS and all(math.isfinite(v) and v > 0 for v in report["psnr"].values())
    assert report["held_out_counts"] == {"tiles": 8, "canvas": 2, "masked_canvas": 2, "reference": 2}
    assert [point["step"] for point in report["curve"]] == [2, 3]
    assert {f"psnr_{name}" for name in HELD_OUT_SETS} <= set(report["curve"][-1])
    # the saved weights are the reported ones (after the calibration)
    held_out = held_out_sets(read_split_images(dataset, "test"))
    assert psnr(vae, held_out["tiles"]) == pytest.approx(report["psnr"]["tiles"], abs=0.006)
    assert report["latent_std"]["train_mean"] == pytest.approx(1.0, abs=1e-3)
    with Image.open(trained / "recon.png") as strip:
        assert strip.size == (8 * 32, 2 * 32)  # 8 held-out tiles over their reconstructions


def test_same_seed_same_weights(dataset, trained, tmp_path):
    train_vae(dataset, tmp_path / "again", steps=3, batch_size=4, eval_every=2, seed=0, progress=False)
    first, second = (AutoencoderKL.from_pretrained(p).state_dict() for p in (trained, tmp_path / "again"))
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_rescale_latents_leaves_reconstructions_unchanged():
    vae = random_vae()
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        before = vae.encode(images).latent_dist
        reconstructions = reconstruct(vae, images)
        rescale_latents(vae, 7.5)
        after = vae.encode(images).latent_dist
    torch.testing.assert_close(after.mean, before.mean * 7.5)
    torch.testing.assert_close(after.std, before.std * 7.5)
    torch.testing.assert_close(reconstruct(vae, images), reconstructions, atol=1e-5, rtol=0)


def test_calibration_gives_unit_latent_std():
    vae = random_vae()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    factor = calibrate_latent_scale(vae, images)
    assert factor > 0 and latent_std(vae, images) == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("settings,match", [
    (dict(batch_size=6), "batch_size must be a positive multiple of 4"),
    (dict(steps=0), "steps must be at least 1"),
    (dict(eval_every=0), "eval_every must be at least 1"),
    (dict(lr=float("nan")), "lr must be a positive number"),
    (dict(loss="l2"), "loss must be one of l1, mse"),
])
def test_bad_settings_are_refused(dataset, tmp_path, settings, match):
    with pytest.raises(InvalidArgumentError, match=match):
        train_vae(dataset, tmp_path / "out", progress=False, **settings)
    assert not (tmp_path / "out").exists()


def test_bad_datasets_are_user_errors(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        train_vae(tmp_path / "missing", tmp_path / "out", steps=1, batch_size=4, progress=False)
    make_dataset(tmp_path / "no_test", 2, size=(32, 32), views_per_identity=2, test_fraction=0.0)
    with pytest.raises(InputFileError, match="test.json lists no images .*test fraction > 0"):
        train_vae(tmp_path / "no_test", tmp_path / "out", steps=1, batch_size=4, progress=False)
    assert not (tmp_path / "out").exists()
