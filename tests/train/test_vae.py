"""imagpose.train.vae: the autoencoder trains on the shared loop (a loadable folder, a report, exact resume), its
latent calibration leaves every reconstruction unchanged, and a design that cannot reproduce colour is refused."""

import dataclasses
import json
import math

import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny
from PIL import Image

from imagpose import autoencoders, presets
from imagpose.errors import InputFileError, InvalidArgumentError
from imagpose.presets import get_preset, randomize_weights
from imagpose.synthetic.dataset import make_dataset
from imagpose.train.checkpoints import list_checkpoints
from imagpose.train.config import StageConfig, load_config
from imagpose.train.vae import initialise_for_training, train_decoder, train_vae
from imagpose.train.vae_data import (
    AutoencoderItems,
    AutoencoderSteps,
    colour_field,
    held_out_sets,
    read_split_images,
)
from imagpose.train.vae_measures import (
    calibrate_latent_channels,
    calibrate_latent_scale,
    colour_round_trip_errors,
    latent_std,
    psnr,
    reconstruct,
    rescale_latents,
)

HELD_OUT_SETS = {"tiles", "canvas", "masked_canvas", "reference"}
TINY_TAESD = dict(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                  num_encoder_blocks=(1,) * 4, num_decoder_blocks=(1,) * 4, latent_channels=4)


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


def random_autoencoder(kind: str, seed: int = 0):
    vae = AutoencoderTiny(**TINY_TAESD) if kind == "tiny" else AutoencoderKL(
        **dict(get_preset("mid").vae, block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=2,
               down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2))
    randomize_weights(vae, torch.Generator().manual_seed(seed))
    return vae.eval()


def test_writes_a_loadable_autoencoder_and_a_report(dataset, trained):
    vae = autoencoders.load_autoencoder(trained)
    assert type(vae).__name__ == get_preset("tiny").vae_class
    report = json.loads((trained / "vae_report.json").read_text())
    assert set(report["psnr"]) == HELD_OUT_SETS and all(math.isfinite(v) and v > 0 for v in report["psnr"].values())
    assert report["held_out_counts"] == {"tiles": 8, "canvas": 2, "masked_canvas": 2, "reference": 2}
    assert [point["step"] for point in report["curve"]] == [2, 3]
    assert {f"psnr_{name}" for name in HELD_OUT_SETS} <= set(report["curve"][-1])
    assert report["held_out_people"]["items"] == 2 and 0 <= report["held_out_people"]["pose_iou"] <= 1
    assert set(report["colour_round_trip"]) == {"flat", "two_colour"}
    # the saved weights are the reported ones (after the calibration)
    held_out = held_out_sets(read_split_images(dataset, "test"))
    assert psnr(vae, held_out["tiles"]) == pytest.approx(report["psnr"]["tiles"], abs=0.006)
    assert report["latent_std"]["train"] == pytest.approx(1.0, abs=3e-3)  # unit per channel; pooled: ~1 - 3 / 8n
    assert report["latent_std"]["channels_before_calibration"]["mean"] == pytest.approx(  # (Tiny: per channel)
        [float(v) for v in autoencoders.channel_normalization(vae)[0]])
    with Image.open(trained / "recon.png") as strip:
        assert strip.size == (8 * 32, 2 * 32)  # 8 held-out tiles over their reconstructions
    # the shared loop's outputs
    assert (trained / "log.csv").read_text().splitlines()[0] == "step,loss,lr,samples_per_second,seconds"
    assert (trained / "loss.png").is_file() and [step for step, _ in list_checkpoints(trained)] == [3]


def test_same_seed_same_weights(dataset, trained, tmp_path):
    train_vae(dataset, tmp_path / "again", steps=3, batch_size=4, eval_every=2, seed=0, progress=False)
    first, second = (autoencoders.load_autoencoder(p).state_dict() for p in (trained, tmp_path / "again"))
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_stopping_and_resuming_gives_the_uninterrupted_run(dataset, trained, tmp_path):
    part = tmp_path / "part"
    stopped = train_vae(dataset, part, steps=3, batch_size=4, eval_every=2, seed=0, stop_after=1, progress=False)
    assert stopped.steps == 1 and not (part / "config.json").exists()
    train_vae(dataset, part, steps=3, batch_size=4, eval_every=2, seed=0, resume=True, progress=False)
    whole, resumed = (autoencoders.load_autoencoder(p).state_dict() for p in (trained, part))
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)
    losses = [line.split(",")[:2] for line in (part / "log.csv").read_text().splitlines()]
    assert losses == [line.split(",")[:2] for line in (trained / "log.csv").read_text().splitlines()]


def test_steps_are_split_between_processes_as_one_process_reads_them(dataset):
    """Two processes with batch 2 read the keys one process with batch 4 reads; a canvas step reads a quarter."""
    settings = dict(steps=6, learning_rate=1e-3)
    one = list(AutoencoderSteps(0, StageConfig(batch_size=8, **settings), 0, 1, seed=0, canvas_fraction=0.5))
    two = [list(AutoencoderSteps(0, StageConfig(batch_size=4, **settings), rank, 2, seed=0, canvas_fraction=0.5))
           for rank in range(2)]
    assert [a + b for a, b in zip(*two)] == one
    assert {len(keys) for keys in one} == {8, 2}  # tile steps and canvas steps both occur
    items = AutoencoderItems(read_split_images(dataset, "train"), seed=0, canvas_fraction=0.5, latent_noise=True,
                             downscale=8)
    tile_step = next(keys for keys in one if len(keys) == 8)
    canvas_step = next(keys for keys in one if len(keys) == 2)
    assert items[tile_step[0]]["pixels"].shape == (3, 32, 32) and items[tile_step[0]]["noise"].shape == (4, 4, 4)
    assert items[canvas_step[0]]["pixels"].shape == (3, 64, 64)
    assert torch.equal(items[tile_step[1]]["pixels"], items[tile_step[1]]["pixels"])  # a function of the key


@pytest.mark.parametrize("kind", ["kl", "tiny"])
def test_rescale_latents_leaves_reconstructions_unchanged(kind):
    vae = random_autoencoder(kind)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        before = autoencoders.encode(vae, images)
        reconstructions = reconstruct(vae, images)
        rescale_latents(vae, 7.5)
        after = autoencoders.encode(vae, images)
    torch.testing.assert_close(after, before * 7.5)
    torch.testing.assert_close(reconstruct(vae, images), reconstructions, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["kl", "tiny"])
def test_calibration_gives_unit_latent_std(kind):
    vae = random_autoencoder(kind)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    factor = calibrate_latent_scale(vae, images)
    assert factor > 0 and latent_std(vae, images) == pytest.approx(1.0, rel=1e-4)


def test_channel_calibration_gives_each_latent_channel_zero_mean_and_unit_std_without_changing_images():
    vae = random_autoencoder("tiny")
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    reconstructions = reconstruct(vae, images)
    for _ in range(2):  # a second calibration replaces the first
        mean, std = calibrate_latent_channels(vae, images)
        latents = autoencoders.encode(vae, images)
        torch.testing.assert_close(latents.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4, rtol=0)
        torch.testing.assert_close(latents.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-4, rtol=0)
    assert len(mean) == len(std) == 4 and min(std) > 0
    torch.testing.assert_close(reconstruct(vae, images), reconstructions, atol=1e-5, rtol=0)


def test_colour_probes_score_a_grey_autoencoder_by_its_worst_channel():
    grey = random_autoencoder("tiny")
    with torch.no_grad():  # the last convolution outputs 0.5 everywhere (Tiny maps [0, 1] to [-1, 1] after it)
        last = grey.decoder.layers[-1]
        last.weight.zero_()
        last.bias.fill_(0.5)
    errors = colour_round_trip_errors(grey, (32, 32))
    assert errors == {"flat": pytest.approx(0.5, abs=1e-6), "two_colour": pytest.approx(0.5, abs=1e-6)}


def test_a_design_that_cannot_reproduce_colour_is_refused(dataset, tmp_path, monkeypatch):
    grey_design = dataclasses.replace(get_preset("mid"), vae_class="AutoencoderKL",
                                      vae=dict(get_preset("mid").vae, norm_num_groups=64))
    monkeypatch.setitem(presets.PRESETS, "mid", grey_design)
    with pytest.raises(InvalidArgumentError, match="'mid' preset's AutoencoderKL cannot reproduce colour: its "
                                                   "narrowest GroupNorm normalises 1 channel"):
        train_vae(dataset, tmp_path / "out", steps=1, batch_size=4, preset="mid", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("settings,match", [
    (dict(batch_size=6), "batch_size must be a positive multiple of 4"),
    (dict(steps=0), "steps must be positive"),
    (dict(eval_every=0), "eval_every must be positive"),
    (dict(learning_rate=float("nan")), "learning_rate must be positive, got nan"),
    (dict(loss="l2"), "loss must be one of l1, mse"),
    (dict(colour_permutation=1.5), "colour_permutation must be in \\[0, 1\\]"),
    (dict(colour_fields=-0.1), "colour_fields must be in \\[0, 1\\]"),
    (dict(decoder_steps=-1), "decoder_steps must be a finite number at least 0"),
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
    make_dataset(tmp_path / "sizes", 3, size=(32, 32), views_per_identity=2, test_fraction=0.34)
    first = tmp_path / "sizes" / json.loads((tmp_path / "sizes" / "train.json").read_text())[0][0]
    Image.open(first).resize((16, 16)).save(first)
    with pytest.raises(InputFileError, match="of one person have different sizes"):
        train_vae(tmp_path / "sizes", tmp_path / "out", steps=1, batch_size=4, progress=False)
    assert not (tmp_path / "out").exists()


def test_the_training_initialisation_carries_the_image_to_the_latents():
    """PyTorch's default initialisation of the norm-free design all but erases the image on its way to the latents
    (the decoder then learns the mean image first); Kaiming convolutions with identity blocks keep it."""
    spec = get_preset("tiny")
    colours = torch.rand(8, 3, 1, 1, generator=torch.Generator().manual_seed(0)).expand(8, 3, 64, 48) * 2 - 1

    def spread(vae) -> float:  # how much the latents differ between the eight flat colours
        with torch.no_grad():
            return float(vae.encode(colours).latents.std(0).mean())

    torch.manual_seed(0)
    default = autoencoders.build_autoencoder(spec.vae_class, spec.vae)
    initialised = autoencoders.build_autoencoder(spec.vae_class, spec.vae)
    initialise_for_training(initialised)
    assert spread(default) < 0.02 < 0.1 < spread(initialised)


def test_the_decoder_phase_trains_the_decoder_and_keeps_the_latent_space(dataset, trained, tmp_path):
    """Encoder weights and latent scale stay bit for bit (a denoiser trained on the latents stays valid); the
    decoder changes; the report says which phase made it."""
    result = train_decoder(dataset, trained, tmp_path / "decoder", decoder_steps=3, batch_size=4, eval_every=2,
                           colour_fields=0.5, progress=False)
    assert result.steps == 3
    before, after = autoencoders.load_autoencoder(trained), autoencoders.load_autoencoder(tmp_path / "decoder")
    assert after.config.scaling_factor == before.config.scaling_factor
    assert autoencoders.channel_normalization(after) == autoencoders.channel_normalization(before) is not None
    for (name, old), new in zip(before.state_dict().items(), after.state_dict().values(), strict=True):
        assert torch.equal(old, new) == (not name.startswith("decoder.")), name
    report = json.loads((tmp_path / "decoder" / "vae_report.json").read_text())
    assert report["decoder_only"] is True and report["settings"]["decoder_steps"] == 3
    assert json.loads((trained / "vae_report.json").read_text())["decoder_only"] is False
    with pytest.raises(InvalidArgumentError, match="decoder_steps must be at least 1"):
        train_decoder(dataset, trained, tmp_path / "none", progress=False)


def test_colour_fields_are_one_or_two_flat_colours():
    counts = []
    for seed in range(40):
        field = colour_field((32, 24), torch.Generator().manual_seed(seed))
        assert field.shape == (3, 32, 24) and field.min() >= -1 and field.max() <= 1
        counts.append(len(torch.unique(field.flatten(1), dim=1).T))
    assert set(counts) == {1, 2}  # flat images and rectangles on another colour both occur
    items = AutoencoderItems(random_identities(), seed=0, canvas_fraction=0.0, latent_noise=False,
                             downscale=8, colour_fields=1.0)
    assert len(torch.unique(items[(0, 0)]["pixels"].flatten(1), dim=1).T) <= 2  # every item replaced


def random_identities():
    return [torch.rand(4, 3, 32, 24) * 2 - 1]


def test_the_encoder_can_be_narrower_than_the_decoder(dataset, tmp_path):
    train_vae(dataset, tmp_path / "narrow", steps=1, batch_size=4, eval_every=1, channels=16, encoder_channels=8,
              encoder_blocks=(0, 1, 2, 3), progress=False)
    config = autoencoders.load_autoencoder(tmp_path / "narrow").config
    assert set(config.encoder_block_out_channels) == {8} and set(config.decoder_block_out_channels) == {16}
    assert list(config.num_encoder_blocks) == [0, 1, 2, 3]
    with pytest.raises(InvalidArgumentError, match="one block count per encoder level"):
        train_vae(dataset, tmp_path / "short", steps=1, batch_size=4, encoder_blocks=(1, 3), progress=False)
    with pytest.raises(InvalidArgumentError, match="encoder_blocks must be block counts"):
        load_config("tiny", ["autoencoder.encoder_blocks=[1, -3, 3, 3]"])


def test_a_diverging_autoencoder_run_stops_and_writes_no_autoencoder(dataset, tmp_path):
    from imagpose.train.loop import TrainingDivergedError

    with pytest.raises(TrainingDivergedError, match="lower the learning rate"):
        train_vae(dataset, tmp_path / "out", steps=2, batch_size=4, eval_every=2, learning_rate=1e30, progress=False)
    assert not (tmp_path / "out" / "config.json").exists() and not (tmp_path / "out" / "vae_report.json").exists()


def test_the_decoder_phase_runs_at_its_own_learning_rate(dataset, trained, tmp_path):
    train_decoder(dataset, trained, tmp_path / "decoder", decoder_steps=2, batch_size=4, eval_every=2,
                  learning_rate=1.0, decoder_learning_rate=1e-5, progress=False)
    record = json.loads((tmp_path / "decoder" / "vae_report.json").read_text())["settings"]
    assert record["decoder_learning_rate"] == 1e-5
    with open(tmp_path / "decoder" / "log.csv") as handle:
        rates = [float(line.split(",")[2]) for line in handle.readlines()[1:]]
    assert 0 < max(rates) <= 1e-5  # the decoder phase never ran at the first phase's rate
