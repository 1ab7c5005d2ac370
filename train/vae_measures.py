"""How faithfully an autoencoder reproduces images: PSNR of held-out sets, held-out people's round trip (the
evaluation's person-mask IoU and colour error), colour probes, and the latent scale the pipeline needs.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio

from imagpose import autoencoders
from imagpose.images import tensor_to_pil


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Encode (as the pipeline) and decode (N, 3, H, W) images in [-1, 1]; output in [0, 1]."""
    device = vae.device
    outputs = []
    for start in range(0, len(images), batch_size):
        latents = autoencoders.encode(vae, images[start:start + batch_size].to(device))
        outputs.append(autoencoders.decode(vae, latents).clamp(-1, 1).cpu())
    return (torch.cat(outputs) + 1) / 2


def psnr(vae, images: torch.Tensor) -> float:
    """Mean per-image PSNR (dB, data range 1) of the reconstructions of (N, 3, H, W) images in [-1, 1]."""
    scores = peak_signal_noise_ratio(reconstruct(vae, images), (images + 1) / 2, data_range=1.0,
                                     reduction="none", dim=(1, 2, 3))
    return float(scores.mean())


# Colour probes in [0, 1] RGB: flat colours, and person-sized rectangles of one colour on another
FLAT_COLOURS = ((1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (1, 1, 1), (0, 0, 0),
                (0.5, 0.5, 0.5), (0.8, 0.4, 0.2), (0.2, 0.4, 0.8))
TWO_COLOURS = (((0, 0, 1), (1, 1, 1)), ((1, 0, 0), (0, 1, 0)), ((1, 1, 0), (0.2, 0.2, 0.6)),
               ((0.9, 0.5, 0.5), (0.3, 0.3, 0.3)), ((0.1, 0.6, 0.2), (0.9, 0.9, 0.7)))


def colour_probe(inner, outer, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(image (3, H, W) in [0, 1], person mask (H, W)): a centred rectangle of ``inner`` on ``outer``, the
    rectangle 5/8 of the height and 3/8 of the width (a standing person's box)."""
    height, width = size
    image = torch.tensor(outer, dtype=torch.float32)[:, None, None].expand(3, height, width).clone()
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[height * 3 // 16:height * 13 // 16, width * 5 // 16:width * 11 // 16] = True
    image[:, mask] = torch.tensor(inner, dtype=torch.float32)[:, None]
    return image, mask


def colour_round_trip_errors(vae, size: tuple[int, int] = (128, 96)) -> dict[str, float]:
    """The worst per-channel error (in [0, 1]) of the mean colour of each region after a round trip: ``flat`` over
    flat images (the middle of the image; borders excluded), ``two_colour`` over rectangle-on-background probes
    (each region's interior, away from the edge where any autoencoder blurs)."""
    height, width = size
    inner = (slice(height // 8, height - height // 8), slice(width // 8, width - width // 8))
    flat = 0.0
    for colour in FLAT_COLOURS:
        image, _ = colour_probe(colour, colour, size)
        output = reconstruct(vae, image[None] * 2 - 1)[0]
        flat = max(flat, float((output[:, inner[0], inner[1]].mean((1, 2)) - image[:, 0, 0]).abs().max()))
    two = 0.0
    margin = max(2, min(size) // 16)
    for person, background in TWO_COLOURS:
        image, mask = colour_probe(person, background, size)
        output = reconstruct(vae, image[None] * 2 - 1)[0]
        eroded = -F.max_pool2d(-mask[None, None].float(), 2 * margin + 1, 1, margin)[0, 0] > 0.5
        outside = F.max_pool2d(mask[None, None].float(), 2 * margin + 1, 1, margin)[0, 0] < 0.5
        for region, colour in ((eroded, person), (outside, background)):
            error = output[:, region].mean(1) - torch.tensor(colour, dtype=torch.float32)
            two = max(two, float(error.abs().max()))
    return {"flat": round(flat, 4), "two_colour": round(two, 4)}


@torch.no_grad()
def held_out_people(vae, data_root: Path) -> dict[str, float]:
    """Round trip of the test split's people (one target view per identity, as ``imagpose train eval`` picks
    them): PSNR, SSIM, person-mask IoU of the segmentation the evaluation uses, colour error inside the person."""
    from .evaluation import load_items, score

    items = load_items(data_root, pairs_per_identity=1, seed=0, max_items=None)
    rows = [score(reconstruct(vae, item.target[None] * 2 - 1)[0], item) for item in items]
    return {key: round(sum(row[key] for row in rows) / len(rows), 4) for key in rows[0]} | {"items": len(rows)}


@torch.no_grad()
def encode_all(vae, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """The pipeline's latents of (N, 3, H, W) images in [-1, 1], encoded ``batch_size`` at a time (on the CPU)."""
    return torch.cat([autoencoders.encode(vae, images[start:start + batch_size].to(vae.device)).cpu()
                      for start in range(0, len(images), batch_size)])


@torch.no_grad()
def latent_std(vae, images: torch.Tensor, batch_size: int = 16) -> float:
    """Std of the pipeline's scaled latents over all elements, for (N, 3, H, W) images in [-1, 1]."""
    return float(encode_all(vae, images, batch_size).std())


@torch.no_grad()
def rescale_latents(vae, factor: float) -> None:
    """Make the latent space ``factor`` times larger without changing any reconstruction. KL: the posterior mean
    and std are scaled by ``factor`` (quant_conv; log-variance + 2 ln factor) and post_quant_conv divides it out.
    Tiny: its ``scaling_factor`` (read by encode and decode) is multiplied by ``factor``."""
    if autoencoders.is_tiny(vae):
        vae.register_to_config(scaling_factor=vae.config.scaling_factor * factor)
        return
    channels = vae.config.latent_channels
    quant, post_quant = vae.quant_conv, vae.post_quant_conv
    quant.weight[:channels] *= factor
    quant.bias[:channels] *= factor
    quant.bias[channels:] += 2 * math.log(factor)
    post_quant.weight /= factor


def calibrate_latent_scale(vae, images: torch.Tensor) -> float:
    """Rescale the latent space so that the pipeline's latents have unit std on ``images``; the factor."""
    factor = 1.0 / latent_std(vae, images)
    rescale_latents(vae, factor)
    return factor


@torch.no_grad()
def calibrate_latent_channels(vae, images: torch.Tensor, batch_size: int = 16) -> tuple[list[float], list[float]]:
    """Set the config's ``latents_mean`` / ``latents_std`` so that each channel of the pipeline's latents has mean 0
    and std 1 on ``images`` (any earlier normalisation replaced); (mean, std) per channel of the latents before."""
    vae.register_to_config(latents_mean=None, latents_std=None)
    latents = encode_all(vae, images, batch_size)
    mean = [round(float(v), 6) for v in latents.mean(dim=(0, 2, 3))]
    std = [round(float(v), 6) for v in latents.std(dim=(0, 2, 3))]
    vae.register_to_config(latents_mean=mean, latents_std=std)
    return mean, std


def recon_strip(vae, images: torch.Tensor) -> Image.Image:
    """Originals (top row) over their reconstructions (bottom row), for (N, 3, H, W) images in [-1, 1]."""
    originals, reconstructions = (images + 1) / 2, reconstruct(vae, images)
    rows = [torch.cat(list(originals), dim=-1), torch.cat(list(reconstructions), dim=-1)]
    return tensor_to_pil(torch.cat(rows, dim=-2)[None])[0]
