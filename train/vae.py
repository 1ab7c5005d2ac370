"""Train the tiny AutoencoderKL (the ``tiny`` preset's VAE) on the generated people, and report its PSNR.

    from imagpose.train.vae import train_vae
    folder = train_vae("data/", "runs/vae")   # config.json + diffusion_pytorch_model.safetensors (a diffusers
                                              # AutoencoderKL folder), recon.png, recon_canvas.png, vae_report.json

Objective: SD's autoencoder loss (LDM ``LPIPSWithDiscriminator``) without its perceptual and adversarial terms:
the L1 (or MSE) reconstruction of a posterior sample, summed over pixels, plus ``kl_weight`` (1e-6, as SD) times
KL(q(z|x) || N(0, I)) summed over latent elements. The perceptual term (LPIPS) needs pretrained VGG/AlexNet weights,
which cannot be downloaded here, so reconstructions are smoother than SD's at the same PSNR; SD's learned scalar
output log-variance is left out too (it only rescales the reconstruction term).

Data: every image of the train split, in the batches the pipeline actually encodes and decodes. A batch is either
``batch_size`` tiles (one random crop and flip each) or ``batch_size / 4`` 2x2 canvases of one identity's views
(one crop and flip per canvas), each canvas a full canvas (what the UNet's output decodes to), a masked canvas
(1-3 tiles black, as the image condition) or one view upscaled to the whole canvas (the FLC reference), in equal
parts. ``canvas_fraction`` of the steps are canvas batches: the VAE's GroupNorms and mid-block attention see the
whole image, so a VAE trained on tiles only reconstructs canvases worse (measured in docs; the report has both).

Latent scale: the official pipeline multiplies encoded latents by 0.18215 (hard-coded), the factor SD chose as
1 / std of its VAE's latents. Our VAE keeps that factor; instead, after training, its latent space is rescaled
exactly (quant_conv scaled by s, post_quant_conv by 1 / s: reconstructions are unchanged) so that the scaled
latents of the training images have unit std, the property 0.18215 gives SD's VAE.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.optimization import get_scheduler
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio
from tqdm.auto import tqdm

from imagpose.errors import InputFileError, InvalidArgumentError
from imagpose.images import load_image, pil_to_tensor, tensor_to_pil
from imagpose.io import OutputFolder, read_json
from imagpose.presets import get_preset
from imagpose.runtime import OFFICIAL_ENCODE_SCALE
from imagpose.timing import Stopwatch

LOSSES = ("l1", "mse")
GRID = (2, 2)  # the official canvas
MAX_SCALE = 1.2  # random crops: zoom in by up to 20%, then a random offset (official ResizeAspect + RandomCrop)
HELD_OUT_TILES = 64  # held-out images scored for PSNR (test split, in file order)
HELD_OUT_CANVASES = 16  # held-out canvases of each kind
DATA_FIX = "create a dataset with `imagpose train make-data --out DIR`, or pass its folder"


# ----------------------------------------------------------------------------- data
def read_split_images(data_root: str | Path, split: str) -> list[torch.Tensor]:
    """The images of ``split`` ("train" / "test") as one (V, 3, H, W) tensor in [-1, 1] per identity."""
    root = Path(data_root)
    if not root.is_dir():
        raise InputFileError(f"Dataset folder {root} does not exist; {DATA_FIX}.")
    annotation = read_json(root / f"{split}.json", DATA_FIX)
    if not isinstance(annotation, list) or not all(isinstance(group, list) for group in annotation):
        raise InputFileError(f"{root / f'{split}.json'} is not a list of identities (lists of image paths); "
                             f"{DATA_FIX}.")
    identities = [torch.stack([pil_to_tensor(load_image(root / path, f"{split} image")) * 2 - 1 for path in group])
                  for group in annotation if group]
    if not identities:
        why = (" (the held-out PSNR needs test people: make the dataset with a test fraction > 0)"
               if split == "test" else "")
        raise InputFileError(f"{root / f'{split}.json'} lists no images{why}; {DATA_FIX}.")
    sizes = {tuple(views.shape[-2:]) for views in identities}
    if len(sizes) != 1:
        raise InputFileError(f"The {split} images of {root} have several sizes {sorted(sizes)}; every image of a "
                             "dataset has the same size.")
    return identities


def check_image_size(size: tuple[int, int], vae: AutoencoderKL, where: Path) -> None:
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if size[0] % factor or size[1] % factor:
        raise InputFileError(f"The images of {where} are {size[0]}x{size[1]} (HxW); the VAE needs sides that are "
                             f"multiples of {factor}: make the dataset with such a size.")


def augment(views: torch.Tensor, generator: torch.Generator, shared: bool = False) -> torch.Tensor:
    """Random crop (zoom in by up to MAX_SCALE, random offset) and horizontal flip of (N, 3, H, W) images.

    ``shared``: one crop and flip for all N (the views of one canvas, as the official dataset does).
    """
    count = 1 if shared else len(views)
    scale = 1 + (MAX_SCALE - 1) * torch.rand(count, generator=generator)
    flip = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0)
    room = 1 - 1 / scale  # largest offset that keeps the crop inside the image (normalised coordinates)
    shift = (torch.rand(count, 2, generator=generator) * 2 - 1) * room[:, None]
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0] = flip / scale
    theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    theta = theta.expand(len(views), 2, 3)
    grid = F.affine_grid(theta, list(views.shape), align_corners=False)
    return F.grid_sample(views, grid, mode="bilinear", padding_mode="border", align_corners=False)


def tile_batch(identities: list[torch.Tensor], size: int, generator: torch.Generator) -> torch.Tensor:
    picks = [_pick_view(identities, generator) for _ in range(size)]
    return augment(torch.stack(picks), generator)


def canvas_batch(identities: list[torch.Tensor], size: int, generator: torch.Generator) -> torch.Tensor:
    """``size`` 2x2 canvases in [-1, 1]: full, masked (1-3 tiles black = -1) or an upscaled reference, in turn."""
    canvases = []
    for _ in range(size):
        views = identities[int(torch.randint(len(identities), (1,), generator=generator))]
        tiles = augment(views[torch.randint(len(views), (GRID[0] * GRID[1],), generator=generator)], generator,
                        shared=True)
        kind = int(torch.randint(3, (1,), generator=generator))
        if kind == 1:
            hidden = torch.randperm(len(tiles), generator=generator)[:1 + int(torch.randint(3, (1,),
                                                                                             generator=generator))]
            tiles[hidden] = -1.0
        canvas = join_tiles(tiles)
        if kind == 2:
            canvas = upscale_reference(tiles[0], canvas.shape[-2:])
        canvases.append(canvas)
    return torch.stack(canvases)


def join_tiles(tiles: torch.Tensor) -> torch.Tensor:
    """(4, 3, H, W) -> (3, 2H, 2W), tiles row-major (the official layout)."""
    rows = [torch.cat(list(tiles[r * GRID[1]:(r + 1) * GRID[1]]), dim=-1) for r in range(GRID[0])]
    return torch.cat(rows, dim=-2)


def upscale_reference(tile: torch.Tensor, size) -> torch.Tensor:
    """A (3, H, W) view in [-1, 1] resized to the canvas, as the pipeline's FLC reference (PIL Lanczos)."""
    image = tensor_to_pil((tile[None] + 1) / 2)[0].resize((size[1], size[0]), Image.LANCZOS)
    return pil_to_tensor(image) * 2 - 1


def _pick_view(identities, generator) -> torch.Tensor:
    views = identities[int(torch.randint(len(identities), (1,), generator=generator))]
    return views[int(torch.randint(len(views), (1,), generator=generator))]


def held_out_sets(identities: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fixed held-out images in [-1, 1]: tiles, full canvases (views 0-3), masked canvases (the T2 layout: the last
    tile black) and references upscaled to canvas size."""
    tiles = torch.cat(identities)[:HELD_OUT_TILES]
    chosen = identities[:HELD_OUT_CANVASES]
    full = [join_tiles(views[torch.arange(4) % len(views)]) for views in chosen]
    masked = []
    for canvas in full:
        canvas = canvas.clone()
        canvas[:, canvas.shape[1] // 2:, canvas.shape[2] // 2:] = -1.0
        masked.append(canvas)
    references = [upscale_reference(views[0], full[0].shape[-2:]) for views in chosen]
    return {"tiles": tiles, "canvas": torch.stack(full), "masked_canvas": torch.stack(masked),
            "reference": torch.stack(references)}


# ----------------------------------------------------------------------------- measures
@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Encode (posterior mean, as the pipeline) and decode (N, 3, H, W) images in [-1, 1]; output in [0, 1]."""
    device = vae.device
    outputs = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        outputs.append(vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1).cpu())
    return (torch.cat(outputs) + 1) / 2


def psnr(vae: AutoencoderKL, images: torch.Tensor) -> float:
    """Mean per-image PSNR (dB, data range 1) of the reconstructions of (N, 3, H, W) images in [-1, 1]."""
    scores = peak_signal_noise_ratio(reconstruct(vae, images), (images + 1) / 2, data_range=1.0,
                                     reduction="none", dim=(1, 2, 3))
    return float(scores.mean())


@torch.no_grad()
def latent_std(vae: AutoencoderKL, images: torch.Tensor, sample: bool = False, batch_size: int = 16) -> float:
    """Std of ``latents * 0.18215`` over all elements (posterior mean as the pipeline's encoding, or a sample as the
    trainer's), for (N, 3, H, W) images in [-1, 1]."""
    generator = torch.Generator().manual_seed(0)
    latents = []
    for start in range(0, len(images), batch_size):
        posterior = vae.encode(images[start:start + batch_size].to(vae.device)).latent_dist
        latents.append((posterior.sample(generator) if sample else posterior.mean).cpu())
    return float(torch.cat(latents).std() * OFFICIAL_ENCODE_SCALE)


@torch.no_grad()
def rescale_latents(vae: AutoencoderKL, factor: float) -> None:
    """Make the latent space ``factor`` times larger without changing any reconstruction: the posterior mean and
    std are scaled by ``factor`` (quant_conv; log-variance + 2 ln factor) and post_quant_conv divides it out."""
    channels = vae.config.latent_channels
    quant, post_quant = vae.quant_conv, vae.post_quant_conv
    quant.weight[:channels] *= factor
    quant.bias[:channels] *= factor
    quant.bias[channels:] += 2 * math.log(factor)
    post_quant.weight /= factor


def calibrate_latent_scale(vae: AutoencoderKL, images: torch.Tensor) -> float:
    """Rescale the latent space so that ``latent_dist.mean * 0.18215`` has unit std on ``images``; the factor."""
    factor = 1.0 / latent_std(vae, images)
    rescale_latents(vae, factor)
    return factor


# ----------------------------------------------------------------------------- training
def vae_loss(vae: AutoencoderKL, images: torch.Tensor, loss: str, kl_weight: float,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """SD's autoencoder loss without LPIPS/GAN, normalised per input element (SD's sums divided by one constant).
    The posterior sample draws from ``generator`` (a run is reproducible by its seed)."""
    posterior = vae.encode(images).latent_dist
    reconstruction = vae.decode(posterior.sample(generator)).sample
    error = (reconstruction - images).abs() if loss == "l1" else (reconstruction - images) ** 2
    kl = posterior.kl().sum()  # summed over latent elements and the batch
    total = (error.sum() + kl_weight * kl) / images.numel()
    return total, {"reconstruction": float(error.detach().mean()), "kl": float(kl.detach()) / len(images)}


def check_settings(steps: int, batch_size: int, lr: float, loss: str, kl_weight: float, canvas_fraction: float,
                   eval_every: int = 1) -> None:
    if steps < 1:
        raise InvalidArgumentError(f"steps must be at least 1, got {steps}.")
    if eval_every < 1:
        raise InvalidArgumentError(f"eval_every must be at least 1 (steps between held-out PSNR measurements), got "
                                   f"{eval_every}.")
    if batch_size < 4 or batch_size % 4:
        raise InvalidArgumentError(f"batch_size must be a positive multiple of 4 (a canvas batch holds batch_size / 4"
                                   f" 2x2 canvases), got {batch_size}.")
    if not (math.isfinite(lr) and lr > 0):
        raise InvalidArgumentError(f"lr must be a positive number, got {lr}.")
    if loss not in LOSSES:
        raise InvalidArgumentError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}.")
    if not (math.isfinite(kl_weight) and kl_weight >= 0):
        raise InvalidArgumentError(f"kl_weight must be a number >= 0, got {kl_weight}.")
    if not 0 <= canvas_fraction <= 1:
        raise InvalidArgumentError(f"canvas_fraction must be in [0, 1], got {canvas_fraction}.")


def train_vae(data_root: str | Path, out_dir: str | Path, steps: int = 2000, batch_size: int = 16, lr: float = 2e-3,
              seed: int = 0, *, loss: str = "l1", kl_weight: float = 1e-6, canvas_fraction: float = 0.25,
              eval_every: int = 250, preset: str = "tiny", device: str | torch.device = "cpu",
              progress: bool = True) -> Path:
    """Train the ``preset``'s AutoencoderKL from scratch on ``data_root``'s train split; write it to ``out_dir``.

    Writes into ``out_dir`` (beside what is there; see :class:`imagpose.io.OutputFolder`): the diffusers folder
    (``config.json`` + ``diffusion_pytorch_model.safetensors``, loadable with ``AutoencoderKL.from_pretrained``),
    ``recon.png`` (held-out tiles: originals over reconstructions), ``recon_canvas.png`` (a held-out canvas |
    its reconstruction) and ``vae_report.json`` (PSNR per held-out set, the curve, latent std, time, settings).
    AdamW at ``lr`` with 1% warm-up and cosine decay; the held-out PSNR is measured every ``eval_every`` steps.
    Returns ``out_dir``.
    """
    check_settings(steps, batch_size, lr, loss, kl_weight, canvas_fraction, eval_every)
    root = Path(data_root)
    with OutputFolder(out_dir) as out:  # an unwritable location fails before the data is read
        held_out = held_out_sets(read_split_images(root, "test"))  # the smaller split first: a missing one fails now
        train = read_split_images(root, "train")
        with torch.random.fork_rng(devices=[]):  # the initial weights depend on ``seed`` only
            torch.manual_seed(seed)
            vae = AutoencoderKL(**get_preset(preset).vae).to(device)
        check_image_size(tuple(train[0].shape[-2:]), vae, root)
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=1e-2)
        schedule = get_scheduler("cosine", optimizer, num_warmup_steps=max(1, steps // 100),
                                 num_training_steps=steps)
        curve = []
        started = time.perf_counter()
        with Stopwatch(device) as watch, tqdm(range(1, steps + 1), desc="vae", disable=not progress) as bar:
            for step in bar:
                vae.train()
                if float(torch.rand(1, generator=generator)) < canvas_fraction:
                    images = canvas_batch(train, batch_size // 4, generator)
                else:
                    images = tile_batch(train, batch_size, generator)
                total, parts = vae_loss(vae, images.to(device), loss, kl_weight, generator)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                schedule.step()
                if step % eval_every == 0 or step == steps:
                    vae.eval()
                    point = {"step": step, "seconds": round(time.perf_counter() - started, 1), **parts,
                             **{f"psnr_{name}": round(psnr(vae, images), 2) for name, images in held_out.items()}}
                    curve.append(point)
                    bar.set_postfix(psnr=point["psnr_tiles"], canvas=point["psnr_canvas"])
        vae.eval()
        training_images = torch.cat(train)
        std_before = latent_std(vae, training_images)
        factor = calibrate_latent_scale(vae, training_images)
        report = {
            "psnr": {name: round(psnr(vae, images), 2) for name, images in held_out.items()},
            "held_out_counts": {name: len(images) for name, images in held_out.items()},
            "latent_std": {
                "scaling_factor": OFFICIAL_ENCODE_SCALE,
                "before_calibration": round(std_before, 4),
                "calibration_factor": round(factor, 4),
                "train_mean": round(latent_std(vae, training_images), 4),
                "train_sample": round(latent_std(vae, training_images, sample=True), 4),
                "held_out_mean": round(latent_std(vae, held_out["tiles"]), 4),
                "held_out_canvas_mean": round(latent_std(vae, held_out["canvas"]), 4),
                "held_out_masked_canvas_mean": round(latent_std(vae, held_out["masked_canvas"]), 4),
            },
            "curve": curve,
            "seconds": round(watch.seconds, 1),
            "threads": torch.get_num_threads(),
            "settings": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "loss": loss,
                         "kl_weight": kl_weight, "canvas_fraction": canvas_fraction, "preset": preset,
                         "train_images": len(training_images), "image_size": list(training_images.shape[-2:])},
        }
        vae.to("cpu").save_pretrained(out.path())
        out.save_image("recon.png", recon_strip(vae, held_out["tiles"][:8]))
        out.save_image("recon_canvas.png", recon_strip(vae, held_out["canvas"][:1]))
        out.write_json("vae_report.json", report)
    return Path(out_dir)


def recon_strip(vae: AutoencoderKL, images: torch.Tensor) -> Image.Image:
    """Originals (top row) over their reconstructions (bottom row), for (N, 3, H, W) images in [-1, 1]."""
    originals, reconstructions = (images + 1) / 2, reconstruct(vae, images)
    rows = [torch.cat(list(originals), dim=-1), torch.cat(list(reconstructions), dim=-1)]
    return tensor_to_pil(torch.cat(rows, dim=-2)[None])[0]
