"""The pipeline's autoencoder: diffusers' ``AutoencoderKL`` (SD's VAE) or ``AutoencoderTiny`` (the TAESD design).

Both map pixels (B, 3, Hc, Wc) in [-1, 1] to latents (B, 4, Hc / 8, Wc / 8) and back. The pipeline, the
trainer and every exported graph see only *scaled* latents z (what the UNet denoises):

    AutoencoderKL    z = E(x).latent_dist.mean * 0.18215   the official pipeline hard-codes the factor when
                                                           encoding; training draws latent_dist.sample()
                     x = D(z / config.scaling_factor)      (0.18215 for every SD-1.x VAE)
    AutoencoderTiny  z = E(x) * config.scaling_factor      deterministic: no posterior, no KL term
                     x = D(z / config.scaling_factor)      TAESD for SD-1.5 (madebyollin/taesd) has factor 1.0:
                                                           its raw latents already are SD's scaled latents

    either, when its config holds ``latents_mean`` / ``latents_std`` (diffusers' keys for the Wan and LTX VAEs):
                     z = (z - latents_mean) / latents_std  per channel, after the factor; decode inverts it first

So a TAESD-style decoder trained on an SD-1.5 VAE's latents drops into a full-size pipeline unchanged. A
from-scratch tiny one is normalised per channel: its channels' means differ by several of their stds, so one
global factor would leave each channel's content a fraction of the unit std the noise schedule assumes.

Colour needs channels per GroupNorm group. A GroupNorm whose groups hold one channel is an instance norm: it
removes each channel's image-wide mean, so a flat colour reaches the next layer as zeros and every flat colour
decodes to the same grey. :func:`check_colour_capacity` refuses such designs (SD's VAE holds 4 channels per
group at full resolution, the narrowest it has).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import torch

from .errors import InputFileError, InvalidArgumentError

# The official pipeline multiplies encoded AutoencoderKL latents by this constant (hard-coded), and divides by
# vae.config.scaling_factor when decoding; both are 0.18215 for every SD1.x VAE.
OFFICIAL_ENCODE_SCALE = 0.18215
AUTOENCODER_CLASSES = ("AutoencoderKL", "AutoencoderTiny")
MIN_CHANNELS_PER_GROUP = 4  # the narrowest group of SD's own VAE (128 channels / 32 groups)
FOLDER_FIX = "pass a diffusers AutoencoderKL or AutoencoderTiny folder (config.json + weights, save_pretrained output)"


def autoencoder_class(name: str) -> type:
    """The diffusers class of a config's ``_class_name``."""
    import diffusers

    if name not in AUTOENCODER_CLASSES:
        raise InvalidArgumentError(f"Unsupported autoencoder class {name!r}; imagpose runs "
                                   f"{' and '.join(AUTOENCODER_CLASSES)}.")
    return getattr(diffusers, name)


def folder_class_name(folder: str | Path) -> str:
    """The ``_class_name`` of an autoencoder folder's config.json (a pipeline's ``vae/`` or a standalone one)."""
    if Path(folder).is_file():
        raise InputFileError(f"{folder} is a file, not an autoencoder folder; {FOLDER_FIX}. A single weights file "
                             "(e.g. a .safetensors of SD's VAE) goes into such a folder beside its config.json.")
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputFileError(f"{path} is missing; {FOLDER_FIX}.") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{path} is not a readable JSON config ({exc}); {FOLDER_FIX}.") from exc
    name = config.get("_class_name", "AutoencoderKL") if isinstance(config, dict) else None
    if name not in AUTOENCODER_CLASSES:
        raise InputFileError(f"{path} describes a {name!r}; {FOLDER_FIX}.")
    return name


def load_autoencoder(folder: str | Path, torch_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """An autoencoder folder loaded with the class its config names."""
    cls = autoencoder_class(folder_class_name(folder))
    with _quiet_config_attributes():
        return cls.from_pretrained(folder, torch_dtype=torch_dtype or torch.float32).eval()


@contextlib.contextmanager
def _quiet_config_attributes():
    """Silence diffusers' "config attributes ... are not expected and will be ignored" warning while a folder
    loads: a tiny autoencoder's config carries ``latents_mean`` / ``latents_std`` (and its width), which
    ``AutoencoderTiny.__init__`` does not take but diffusers keeps on ``vae.config``, where
    :func:`channel_normalization` reads them, so the warning is wrong for them. Other warnings still show."""
    logger = logging.getLogger("diffusers.configuration_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def build_autoencoder(class_name: str, config: dict) -> torch.nn.Module:
    """A new autoencoder of ``class_name`` from its init arguments (a preset's ``vae``)."""
    return autoencoder_class(class_name)(**config)


def is_tiny(vae) -> bool:
    """Whether ``vae`` is the TAESD design (deterministic latents, no posterior)."""
    return type(vae).__name__ == "AutoencoderTiny"


# ----------------------------------------------------------------------------- scaled latents
def channel_normalization(vae) -> tuple[list[float], list[float]] | None:
    """The config's per-channel ``(latents_mean, latents_std)`` of the scaled latents, or None."""
    mean, std = vae.config.get("latents_mean"), vae.config.get("latents_std")
    return None if mean is None or std is None else (list(mean), list(std))


def _per_channel(values: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


def encode(vae, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, Hc, Wc) in [-1, 1] -> scaled latents (B, 4, h, w): the posterior mean (KL) or the encoding (Tiny)."""
    if is_tiny(vae):
        return normalize_channels(vae, vae.encode(pixels).latents * vae.config.scaling_factor)
    return normalize_channels(vae, vae.encode(pixels).latent_dist.mean * OFFICIAL_ENCODE_SCALE)


def encode_for_training(vae, pixels: torch.Tensor, posterior_noise: torch.Tensor) -> torch.Tensor:
    """Scaled latents as training draws them: ``latent_dist.sample()`` with the given N(0, I) draw (KL: mean +
    std * noise), or the deterministic encoding (Tiny: the draw is not used)."""
    if is_tiny(vae):
        return encode(vae, pixels)
    posterior = vae.encode(pixels).latent_dist
    sample = posterior.mean + posterior.std * posterior_noise.to(posterior.mean.dtype)
    return normalize_channels(vae, sample * OFFICIAL_ENCODE_SCALE)


def normalize_channels(vae, latents: torch.Tensor) -> torch.Tensor:
    """(latents - latents_mean) / latents_std per channel when the config holds them (identity otherwise)."""
    normalization = channel_normalization(vae)
    if normalization is None:
        return latents
    mean, std = normalization
    return (latents - _per_channel(mean, latents)) / _per_channel(std, latents)


def denormalize_channels(vae, latents: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`normalize_channels`."""
    normalization = channel_normalization(vae)
    if normalization is None:
        return latents
    mean, std = normalization
    return latents * _per_channel(std, latents) + _per_channel(mean, latents)


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents (B, 4, h, w) -> pixels (B, 3, Hc, Wc) in about [-1, 1] (not clamped)."""
    return vae.decode(denormalize_channels(vae, latents) / vae.config.scaling_factor, return_dict=False)[0]


# ----------------------------------------------------------------------------- geometry
def downscale_factor(vae) -> int:
    """Pixels per latent along each side (8 for SD's VAE and TAESD)."""
    config = vae.config
    if is_tiny(vae):
        return 2 ** (len(config.encoder_block_out_channels) - 1)
    return 2 ** (len(config.block_out_channels) - 1)


def full_resolution_widths(vae) -> tuple[int, int]:
    """(encoder, decoder) channels of the widest tensors at full image resolution (the memory estimate's terms):
    KL: the encoder's first block and the decoder's last upsampler; Tiny: the encoder's first block and the
    decoder's convolution after its last upsampling."""
    config = vae.config
    if is_tiny(vae):
        decoder = config.decoder_block_out_channels
        return config.encoder_block_out_channels[0], max(decoder[-2:])
    channels = config.block_out_channels
    return channels[0], channels[1] if len(channels) > 1 else channels[0]


# ----------------------------------------------------------------------------- colour capacity
def narrowest_group(vae) -> int | None:
    """The fewest channels any GroupNorm of ``vae`` normalises together (None: no GroupNorm, as TAESD)."""
    widths = [m.num_channels // m.num_groups for m in vae.modules() if isinstance(m, torch.nn.GroupNorm)]
    return min(widths) if widths else None


def colour_capacity_problem(vae) -> str | None:
    """Why ``vae`` cannot reproduce flat colours, or None when it can (see the module docstring)."""
    narrowest = narrowest_group(vae)
    if narrowest is None or narrowest >= MIN_CHANNELS_PER_GROUP:
        return None
    return (f"its narrowest GroupNorm normalises {narrowest} channel(s) per group (fewer than "
            f"{MIN_CHANNELS_PER_GROUP}): such a norm removes each channel's image-wide mean, so flat colours decode "
            f"to grey. Use fewer groups (norm_num_groups <= smallest block_out_channels / {MIN_CHANNELS_PER_GROUP}) "
            "or the AutoencoderTiny design")


def check_colour_capacity(vae, what: str) -> None:
    """Refuse to train an autoencoder design that cannot reproduce colour."""
    problem = colour_capacity_problem(vae)
    if problem is not None:
        raise InvalidArgumentError(f"{what} cannot reproduce colour: {problem}.")
