"""Train the preset's autoencoder (``AutoencoderKL`` or the TAESD-style ``AutoencoderTiny``) on the generated
people, on the shared training loop (:mod:`imagpose.train.loop`: checkpoints, exact resume, trackers), and report
how faithfully it reproduces held-out people.

    from imagpose.train.vae import train_vae
    folder = train_vae("data/", "runs/vae")   # the autoencoder folder (config.json + safetensors), recon.png,
                                              # recon_canvas.png, vae_report.json, vae_curve.json, log.csv, loss.png

Objective: SD's autoencoder loss (LDM ``LPIPSWithDiscriminator``) without its perceptual and adversarial terms:
the L1 (or MSE) reconstruction, plus for AutoencoderKL ``kl_weight`` (1e-6, as SD) times KL(q(z|x) || N(0, I))
of a posterior sample (the Tiny design has deterministic latents and no KL term, as TAESD). The perceptual term
(LPIPS) needs pretrained VGG/AlexNet weights, which cannot be downloaded here, so reconstructions are smoother than
SD's at the same PSNR.

Data: every image of the train split, in the batches the pipeline actually encodes and decodes. A step is either
``batch_size`` tiles (one random crop and flip each) or ``batch_size / 4`` 2x2 canvases of one identity's views
(one crop and flip per canvas), each canvas a full canvas (what the UNet's output decodes to), a masked canvas
(1-3 tiles black, as the image condition) or one view upscaled to the whole canvas (the FLC reference), in equal
parts; ``canvas_fraction`` of the steps are canvas steps. Item ``(step, slot)`` is a function of ``(seed, step,
slot)`` alone, so a resumed run and N processes see what one uninterrupted process does.

Latent scale: the pipeline's latents should have unit std, the property SD's 0.18215 gives SD's VAE. After
training, AutoencoderKL's latent space is rescaled exactly (quant_conv scaled by s, post_quant_conv by 1 / s:
reconstructions are unchanged) because the official pipeline hard-codes 0.18215 when encoding; AutoencoderTiny's
``scaling_factor`` is set to 1 / std (its encode and decode both read it).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio

from imagpose import autoencoders
from imagpose.errors import InputFileError
from imagpose.images import load_image, pil_to_tensor, tensor_to_pil
from imagpose.io import OutputFolder, read_json
from imagpose.presets import get_preset

from .config import AutoencoderConfig, OptimizerConfig, StageConfig
from .data import seeded_generator
from .loop import RunSettings, TrainingResult, read_log, train

GRID = (2, 2)  # the official canvas
MAX_SCALE = 1.2  # random crops: zoom in by up to 20%, then a random offset (official ResizeAspect + RandomCrop)
HELD_OUT_TILES = 64  # held-out images scored for PSNR (test split, in file order)
HELD_OUT_CANVASES = 16  # held-out canvases of each kind
TASK_KEY = 7  # seeds the autoencoder's draws apart from the stages' (seeded_generator(seed, TASK_KEY, ...))
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


def check_image_size(size: tuple[int, int], vae, where: Path) -> None:
    factor = autoencoders.downscale_factor(vae)
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


def random_tile(identities: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """One view of a random identity, cropped and flipped: (3, H, W) in [-1, 1]."""
    views = identities[int(torch.randint(len(identities), (1,), generator=generator))]
    view = views[int(torch.randint(len(views), (1,), generator=generator))]
    return augment(view[None], generator)[0]


def random_canvas(identities: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """A 2x2 canvas of one identity's views in [-1, 1]: full, masked (1-3 tiles black = -1) or an upscaled
    reference, with equal chances."""
    views = identities[int(torch.randint(len(identities), (1,), generator=generator))]
    tiles = augment(views[torch.randint(len(views), (GRID[0] * GRID[1],), generator=generator)], generator,
                    shared=True)
    kind = int(torch.randint(3, (1,), generator=generator))
    if kind == 1:
        hidden = torch.randperm(len(tiles), generator=generator)[:1 + int(torch.randint(3, (1,), generator=generator))]
        tiles[hidden] = -1.0
    canvas = join_tiles(tiles)
    return upscale_reference(tiles[0], canvas.shape[-2:]) if kind == 2 else canvas


def join_tiles(tiles: torch.Tensor) -> torch.Tensor:
    """(4, 3, H, W) -> (3, 2H, 2W), tiles row-major (the official layout)."""
    rows = [torch.cat(list(tiles[r * GRID[1]:(r + 1) * GRID[1]]), dim=-1) for r in range(GRID[0])]
    return torch.cat(rows, dim=-2)


def upscale_reference(tile: torch.Tensor, size) -> torch.Tensor:
    """A (3, H, W) view in [-1, 1] resized to the canvas, as the pipeline's FLC reference (PIL Lanczos)."""
    image = tensor_to_pil((tile[None] + 1) / 2)[0].resize((size[1], size[0]), Image.LANCZOS)
    return pil_to_tensor(image) * 2 - 1


def permute_colours(image: torch.Tensor, generator: torch.Generator, probability: float) -> torch.Tensor:
    """With ``probability``, one of the five other orders of the RGB channels of a (3, H, W) image: a codec must
    reproduce any colour, and the generated people's palette alone leaves saturated and flat colours rare."""
    if probability == 0 or float(torch.rand(1, generator=generator)) >= probability:
        return image
    orders = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
    return image[list(orders[int(torch.randint(len(orders), (1,), generator=generator))])]


def is_canvas_step(seed: int, step: int, canvas_fraction: float) -> bool:
    """Whether optimizer step ``step`` trains on canvases (a function of (seed, step) alone)."""
    return float(torch.rand(1, generator=seeded_generator(seed, TASK_KEY, step))) < canvas_fraction


class AutoencoderItems(torch.utils.data.Dataset):
    """Item ``(step, slot)``: a tile, or on canvas steps a canvas, and the posterior's N(0, I) draw for it."""

    def __init__(self, identities: list[torch.Tensor], seed: int, canvas_fraction: float, latent_noise: bool,
                 downscale: int, colour_permutation: float = 0.0):
        self.identities, self.seed, self.canvas_fraction = identities, seed, canvas_fraction
        self.latent_noise, self.downscale, self.colour_permutation = latent_noise, downscale, colour_permutation

    def __len__(self) -> int:
        return len(self.identities)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        step, slot = key
        generator = seeded_generator(self.seed, TASK_KEY, step, slot)
        if is_canvas_step(self.seed, step, self.canvas_fraction):
            pixels = random_canvas(self.identities, generator)
        else:
            pixels = random_tile(self.identities, generator)
        item = {"pixels": permute_colours(pixels, generator, self.colour_permutation)}
        if self.latent_noise:
            latent = (4, pixels.shape[-2] // self.downscale, pixels.shape[-1] // self.downscale)
            item["noise"] = torch.randn(latent, generator=generator)
        return item


class AutoencoderSteps(torch.utils.data.Sampler):
    """The ``(step, slot)`` keys this process reads, one list per micro-batch, from ``start_step`` on: a tile step
    has ``batch_size`` slots per process and micro-batch, a canvas step ``batch_size / 4`` (the same pixels)."""

    def __init__(self, start_step: int, settings: StageConfig, process_index: int, num_processes: int, seed: int,
                 canvas_fraction: float):
        self.start_step, self.settings = start_step, settings
        self.process_index, self.num_processes = process_index, num_processes
        self.seed, self.canvas_fraction = seed, canvas_fraction

    def __len__(self) -> int:
        return (self.settings.steps - self.start_step) * self.settings.gradient_accumulation_steps

    def __iter__(self):
        accumulation = self.settings.gradient_accumulation_steps
        for step in range(self.start_step, self.settings.steps):
            size = self.settings.batch_size // (4 if is_canvas_step(self.seed, step, self.canvas_fraction) else 1)
            for micro in range(accumulation):
                first = (micro * self.num_processes + self.process_index) * size
                yield [(step, slot) for slot in range(first, first + size)]


def collate(items: list[dict]) -> dict:
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


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
    from .evaluation import color_error, foreground_mask, image_scores, load_items, mask_iou

    items = load_items(data_root, pairs_per_identity=1, seed=0, max_items=None)
    rows = []
    for item in items:
        output = reconstruct(vae, item.target[None] * 2 - 1)[0]
        scores = image_scores(output, item.target)
        rows.append({**scores, "pose_iou": mask_iou(foreground_mask(output, item.background), item.mask),
                     "color_error": color_error(output, item.target, item.mask)})
    return {key: round(sum(row[key] for row in rows) / len(rows), 4) for key in rows[0]} | {"items": len(rows)}


@torch.no_grad()
def latent_std(vae, images: torch.Tensor, batch_size: int = 16) -> float:
    """Std of the pipeline's scaled latents over all elements, for (N, 3, H, W) images in [-1, 1]."""
    latents = [autoencoders.encode(vae, images[start:start + batch_size].to(vae.device)).cpu()
               for start in range(0, len(images), batch_size)]
    return float(torch.cat(latents).std())


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


# ----------------------------------------------------------------------------- training
class AutoencoderTrainingModel(nn.Module):
    """The autoencoder as the one module accelerate wraps: ``forward`` is one training round trip."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor, noise: torch.Tensor | None = None):
        """pixels (B, 3, H, W) in [-1, 1] -> (reconstruction, KL summed over latent elements and the batch; 0 for
        the deterministic Tiny design). ``noise``: the posterior's N(0, I) draw (KL)."""
        if autoencoders.is_tiny(self.vae):
            latents = self.vae.encode(pixels).latents
            return self.vae.decode(latents).sample, pixels.new_zeros(())
        posterior = self.vae.encode(pixels).latent_dist
        latents = posterior.mean + posterior.std * noise.to(posterior.mean.dtype)
        return self.vae.decode(latents).sample, posterior.kl().sum()


def initialise_for_training(vae) -> None:
    """Start a from-scratch AutoencoderTiny where its input reaches its output: Kaiming-normal convolutions (ReLU
    gain, zero biases) and residual branches whose last convolution is zero, so every block starts as the identity
    (as Fixup / zero-init residual networks). With PyTorch's default initialisation the norm-free design shrinks
    the image-dependent signal about 2x per layer (35x by the latents) and trains for hundreds of steps to grey
    images first (docs/training.md). AutoencoderKL keeps diffusers' initialisation: its GroupNorms rescale the
    signal at every block."""
    if not autoencoders.is_tiny(vae):
        return
    from diffusers.models.unets.unet_2d_blocks import AutoencoderTinyBlock

    with torch.no_grad():
        for module in vae.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for module in vae.modules():
            if isinstance(module, AutoencoderTinyBlock):
                nn.init.zeros_(module.conv[-1].weight)


class AutoencoderTask:
    """The autoencoder on the shared loop; the product is the autoencoder folder itself (``out``)."""

    name = "vae"

    def __init__(self, data_root: str | Path, preset: str, seed: int, settings: AutoencoderConfig):
        self.root, self.preset, self.seed, self.settings = Path(data_root), get_preset(preset), seed, settings
        self.test = read_split_images(self.root, "test")  # the smaller split first: a missing one fails now
        self.train = read_split_images(self.root, "train")
        self.held_out = held_out_sets(self.test)
        with torch.random.fork_rng(devices=[]):  # the initial weights depend on ``seed`` only
            torch.manual_seed(seed)
            vae = autoencoders.build_autoencoder(self.preset.vae_class, self.preset.vae)
            initialise_for_training(vae)
        autoencoders.check_colour_capacity(vae, f"The {preset!r} preset's {self.preset.vae_class}")
        check_image_size(tuple(self.train[0].shape[-2:]), vae, self.root)
        self.model = AutoencoderTrainingModel(vae)

    def setup(self, accelerator, out: Path, start_step: int) -> None:
        self.device = accelerator.device
        # the held-out curve of a resumed run keeps its points up to the checkpoint
        self.curve = [p for p in _read_curve(out) if p["step"] <= start_step] if start_step else []

    def batches(self, start_step: int, settings: StageConfig, process_index: int, num_processes: int):
        vae = self.model.vae
        items = AutoencoderItems(self.train, self.seed, self.settings.canvas_fraction,
                                 latent_noise=not autoencoders.is_tiny(vae),
                                 downscale=autoencoders.downscale_factor(vae),
                                 colour_permutation=self.settings.colour_permutation)
        sampler = AutoencoderSteps(start_step, settings, process_index, num_processes, self.seed,
                                   self.settings.canvas_fraction)
        return torch.utils.data.DataLoader(items, batch_sampler=sampler, collate_fn=collate)

    def loss(self, model, batch: dict, step: int, micro: int, accelerator) -> tuple[torch.Tensor, int]:
        pixels = batch["pixels"].to(self.device)
        noise = batch["noise"].to(self.device) if "noise" in batch else None
        reconstruction, kl = model(pixels, noise)
        error = reconstruction - pixels
        error = error.abs() if self.settings.loss == "l1" else error.pow(2)
        # SD's sums over pixels and latent elements, normalised by one constant (the input's element count)
        return (error.sum() + self.settings.kl_weight * kl) / pixels.numel(), len(pixels)

    def validate(self, out: Path, step: int, trained) -> None:
        point = {"step": step, **{f"psnr_{name}": round(psnr(trained.vae, images), 2)
                                  for name, images in self.held_out.items()}}
        self.curve = [p for p in self.curve if p["step"] < step] + [point]
        with OutputFolder(out) as folder:
            folder.write_json("vae_curve.json", self.curve)

    def finish(self, out: Path, trained) -> Path:
        vae = trained.vae
        training_images = torch.cat(self.train)
        std_before = latent_std(vae, training_images)
        factor = calibrate_latent_scale(vae, training_images)
        rows = read_log(out / "log.csv", 10**12)
        report = {
            "class": type(vae).__name__,
            "parameters": sum(p.numel() for p in vae.parameters()),
            "psnr": {name: round(psnr(vae, images), 2) for name, images in self.held_out.items()},
            "held_out_counts": {name: len(images) for name, images in self.held_out.items()},
            "held_out_people": held_out_people(vae, self.root),
            "colour_round_trip": colour_round_trip_errors(vae, tuple(training_images.shape[-2:])),
            "latent_std": {
                "before_calibration": round(std_before, 4),
                "calibration_factor": round(factor, 4),
                "train": round(latent_std(vae, training_images), 4),
                "held_out": round(latent_std(vae, self.held_out["tiles"]), 4),
                "held_out_canvas": round(latent_std(vae, self.held_out["canvas"]), 4),
                "held_out_masked_canvas": round(latent_std(vae, self.held_out["masked_canvas"]), 4),
            },
            "curve": self.curve,
            "seconds": round(rows[-1]["seconds"], 1) if rows else None,
            "threads": torch.get_num_threads(),
            "settings": {"steps": rows[-1]["step"] if rows else None, "seed": self.seed, "preset": self.preset.name,
                         **dataclasses.asdict(self.settings), "train_images": len(training_images),
                         "image_size": list(training_images.shape[-2:])},
        }
        with OutputFolder(out) as folder:
            vae.save_pretrained(folder.path())
            folder.save_image("recon.png", recon_strip(vae, self.held_out["tiles"][:8]))
            folder.save_image("recon_canvas.png", recon_strip(vae, self.held_out["canvas"][:1]))
            folder.write_json("vae_report.json", report)
        return out


def _read_curve(out: Path) -> list[dict]:
    path = out / "vae_curve.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []


def train_vae(data_root: str | Path, out_dir: str | Path, config: AutoencoderConfig | None = None, *, seed: int = 0,
              preset: str = "tiny", trackers: tuple[str, ...] = (), resume: bool = False,
              stop_after: int | None = None, progress: bool = True, **settings) -> TrainingResult:
    """Train the ``preset``'s autoencoder from scratch on ``data_root``'s train split into ``out_dir``.

    ``config`` (default :class:`~imagpose.train.config.AutoencoderConfig`), with any of its fields overridden by
    keyword (``steps=3``). Writes into ``out_dir`` (beside what is there; see :class:`imagpose.io.OutputFolder`):
    the diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, loadable with
    :func:`imagpose.autoencoders.load_autoencoder`), ``recon.png`` (held-out tiles: originals over
    reconstructions), ``recon_canvas.png``, ``vae_report.json`` (PSNR per held-out set, held-out people's round
    trip, colour probes, latent std, time, settings), ``vae_curve.json`` (held-out PSNR every ``eval_every``
    steps), ``log.csv`` / ``loss.png`` and ``checkpoints/``. AdamW with 1% warm-up and cosine decay.
    ``resume`` / ``stop_after``: as :func:`imagpose.train.loop.train`.
    """
    config = dataclasses.replace(config or AutoencoderConfig(), **settings)  # validated as any config
    with OutputFolder(out_dir):  # an unwritable location fails first; a folder made for a failed run is removed
        task = AutoencoderTask(data_root, preset, seed, config)
    optimizer = OptimizerConfig(lr_scheduler="cosine", warmup_steps=max(1, config.steps // 100),
                                max_grad_norm=math.inf)
    record = {"task": "vae", "data": str(data_root), "seed": seed, "preset": preset, **dataclasses.asdict(config)}
    run = RunSettings(seed=seed, optimizer=optimizer, trackers=tuple(trackers), record=record)
    stage = StageConfig(steps=config.steps, batch_size=config.batch_size, learning_rate=config.learning_rate,
                        checkpoint_every=config.checkpoint_every, keep_checkpoints=2,
                        validate_every=config.eval_every, log_every=1)
    return train(task, run, stage, out_dir, resume=resume, stop_after=stop_after, progress=progress)


def recon_strip(vae, images: torch.Tensor) -> Image.Image:
    """Originals (top row) over their reconstructions (bottom row), for (N, 3, H, W) images in [-1, 1]."""
    originals, reconstructions = (images + 1) / 2, reconstruct(vae, images)
    rows = [torch.cat(list(originals), dim=-1), torch.cat(list(reconstructions), dim=-1)]
    return tensor_to_pil(torch.cat(rows, dim=-2)[None])[0]
