"""imagpose.autoencoders: both autoencoder classes run in the pipeline with the same latent contract, folders load
with the class their config names, and designs that cannot reproduce colour are refused."""

import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny

from imagpose import autoencoders
from imagpose.errors import InputFileError, InvalidArgumentError
from imagpose.pipeline import IMAGPosePipeline
from imagpose.presets import PRESETS, SD_VAE, build_components, build_pipeline, get_preset, randomize_weights
from imagpose.samples import sample
from imagpose.scenarios import t2

TINY_TAESD = dict(encoder_block_out_channels=(16, 16, 16, 16), decoder_block_out_channels=(16, 16, 16, 16),
                  num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4)
TINY_KL = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 16, 32, 32],
               down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
               layers_per_block=1, act_fn="silu", sample_size=64, scaling_factor=0.18215)


def random(module, seed=0):
    randomize_weights(module, torch.Generator().manual_seed(seed))
    return module.eval()


def pixels(seed=0, size=(64, 48)):
    return torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@torch.no_grad()
def test_kl_latents_are_the_posterior_mean_times_the_official_constant():
    vae = random(AutoencoderKL(**TINY_KL, norm_num_groups=2))
    x = pixels()
    torch.testing.assert_close(autoencoders.encode(vae, x), vae.encode(x).latent_dist.mean * 0.18215)
    z = torch.randn(2, 4, 8, 6)
    torch.testing.assert_close(autoencoders.decode(vae, z), vae.decode(z / 0.18215).sample)


@torch.no_grad()
def test_tiny_latents_are_scaled_by_its_scaling_factor_both_ways():
    vae = random(AutoencoderTiny(**TINY_TAESD, scaling_factor=0.5))
    x = pixels()
    torch.testing.assert_close(autoencoders.encode(vae, x), vae.encode(x).latents * 0.5)
    torch.testing.assert_close(autoencoders.encode_for_training(vae, x, torch.randn(2, 4, 8, 6)),
                               autoencoders.encode(vae, x))  # deterministic: the draw is not used
    z = torch.randn(2, 4, 8, 6)
    torch.testing.assert_close(autoencoders.decode(vae, z), vae.decode(z / 0.5).sample)


@torch.no_grad()
def test_per_channel_normalisation_is_applied_after_the_factor_and_inverted_before_decoding(tmp_path):
    vae = random(AutoencoderTiny(**TINY_TAESD, scaling_factor=0.5))
    mean, std = [0.5, -1.0, 2.0, 0.0], [0.25, 2.0, 1.0, 4.0]
    vae.register_to_config(latents_mean=mean, latents_std=std)
    x, per_channel = pixels(), lambda v: torch.tensor(v).view(1, 4, 1, 1)
    expected = (vae.encode(x).latents * 0.5 - per_channel(mean)) / per_channel(std)
    torch.testing.assert_close(autoencoders.encode(vae, x), expected)
    z = torch.randn(2, 4, 8, 6)
    torch.testing.assert_close(autoencoders.decode(vae, z), vae.decode((z * per_channel(std) + per_channel(mean))
                                                                       / 0.5).sample)
    vae.save_pretrained(tmp_path)  # the keys travel in config.json
    assert autoencoders.channel_normalization(autoencoders.load_autoencoder(tmp_path)) == (mean, std)


@torch.no_grad()
def test_training_latents_of_kl_are_mean_plus_std_times_the_draw():
    vae = random(AutoencoderKL(**TINY_KL, norm_num_groups=2))
    x, noise = pixels(), torch.randn(2, 4, 8, 6, generator=torch.Generator().manual_seed(3))
    posterior = vae.encode(x).latent_dist
    torch.testing.assert_close(autoencoders.encode_for_training(vae, x, noise),
                               (posterior.mean + posterior.std * noise) * 0.18215)


def test_geometry_of_both_classes():
    kl, tiny = AutoencoderKL(**TINY_KL, norm_num_groups=2), AutoencoderTiny(**TINY_TAESD)
    assert autoencoders.downscale_factor(kl) == autoencoders.downscale_factor(tiny) == 8
    assert autoencoders.full_resolution_widths(kl) == (8, 16)
    assert autoencoders.full_resolution_widths(tiny) == (16, 16)


@pytest.mark.parametrize("vae", [AutoencoderKL(**TINY_KL, norm_num_groups=2), AutoencoderTiny(**TINY_TAESD)],
                         ids=["kl", "tiny"])
def test_a_pipeline_folder_loads_with_the_autoencoder_class_it_was_saved_with(vae, tmp_path):
    components = build_components("tiny")
    components["vae"] = random(vae)
    pipe = IMAGPosePipeline(**components)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = IMAGPosePipeline.from_pretrained(tmp_path / "pipe")
    assert type(loaded.vae) is type(vae) and loaded.vae_scale_factor == 8
    image, keypoints = sample("person_red_front")
    _, target = sample("person_red_walking")
    request = t2(image, keypoints, target, tile_size=(64, 48), seed=0)
    ours = pipe(request, num_inference_steps=2, output_type="pt", progress=False).results[0].canvas
    theirs = loaded(request, num_inference_steps=2, output_type="pt", progress=False).results[0].canvas
    torch.testing.assert_close(ours, theirs)


def test_folder_class_names_are_read_and_unknown_ones_refused(tmp_path):
    AutoencoderTiny(**TINY_TAESD).save_pretrained(tmp_path / "taesd")
    assert autoencoders.folder_class_name(tmp_path / "taesd") == "AutoencoderTiny"
    assert isinstance(autoencoders.load_autoencoder(tmp_path / "taesd"), AutoencoderTiny)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    with pytest.raises(InputFileError, match="describes a 'UNet2DModel'; pass a diffusers AutoencoderKL or "
                                             "AutoencoderTiny folder"):
        autoencoders.load_autoencoder(tmp_path / "other")
    with pytest.raises(InputFileError, match="config.json is missing"):
        autoencoders.load_autoencoder(tmp_path / "missing")
    (tmp_path / "vae.safetensors").write_bytes(b"weights")
    with pytest.raises(InputFileError, match="vae.safetensors is a file, not an autoencoder folder"):
        autoencoders.load_autoencoder(tmp_path / "vae.safetensors")


def test_one_channel_groups_are_refused_and_wider_groups_pass():
    """A GroupNorm of one channel per group is an instance norm: flat colours reach the next layer as zeros."""
    narrow = AutoencoderKL(**TINY_KL, norm_num_groups=8)  # 8 channels in 8 groups at full resolution
    assert autoencoders.narrowest_group(narrow) == 1
    with pytest.raises(InvalidArgumentError, match="1 channel\\(s\\) per group .*flat colours decode to grey"):
        autoencoders.check_colour_capacity(narrow, "This VAE")
    assert autoencoders.narrowest_group(AutoencoderKL(**TINY_KL, norm_num_groups=2)) == 4
    assert autoencoders.colour_capacity_problem(AutoencoderTiny(**TINY_TAESD)) is None  # no norms at all
    assert autoencoders.narrowest_group(AutoencoderKL(**SD_VAE)) == 4  # SD's own VAE: 128 channels / 32 groups


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_autoencoder_can_reproduce_colour(name):
    spec = get_preset(name)
    with torch.device("meta"):
        vae = autoencoders.build_autoencoder(spec.vae_class, spec.vae)
    assert autoencoders.colour_capacity_problem(vae) is None


def test_one_channel_groups_map_every_flat_feature_map_to_the_same_output():
    """The mechanism behind the refusal: a GroupNorm of one channel per group normalises each channel by its own
    image-wide mean, so a flat feature map (what a flat colour becomes) leaves as the norm's bias whatever its
    values; four channels per group keep their differences."""
    flat = [torch.tensor(values)[None, :, None, None].expand(1, 8, 16, 12) for values in
            ([1.0, -2.0, 0.5, 3.0, 0.0, 1.0, 2.0, -1.0], [-3.0, 0.2, 1.0, 0.0, 2.0, -1.0, 0.5, 4.0])]
    instance = torch.nn.GroupNorm(8, 8)
    torch.testing.assert_close(instance(flat[0]), instance(flat[1]), atol=1e-4, rtol=0)  # float rounding of the mean
    grouped = torch.nn.GroupNorm(2, 8)
    assert (grouped(flat[0]) - grouped(flat[1])).abs().max() > 1.0


def test_the_tiny_preset_builds_its_autoencoder_class():
    pipe = build_pipeline("tiny")
    assert type(pipe.vae).__name__ == get_preset("tiny").vae_class


def test_a_normalised_tiny_autoencoder_loads_without_a_wrong_warning():
    """Its config's latents_mean / latents_std are not AutoencoderTiny's init arguments; diffusers keeps them on the
    config (where the normalisation reads them), so its "will be ignored" warning must not reach the user."""
    import logging

    from imagpose.autoencoders import channel_normalization, load_autoencoder
    from imagpose.pretrained import shipped_model_dir

    class Recorder(logging.Handler):
        messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    logger, recorder = logging.getLogger("diffusers.configuration_utils"), Recorder()
    logger.addHandler(recorder)
    try:
        vae = load_autoencoder(shipped_model_dir() / "vae")
    finally:
        logger.removeHandler(recorder)
    assert channel_normalization(vae) is not None
    assert not [message for message in recorder.messages if "not expected" in message]
