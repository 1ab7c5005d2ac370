"""The autoencoder's training data: tiles and 2x2 canvases of the generated people, as the pipeline encodes and
decodes them, each a function of (seed, step, slot) (see :mod:`imagpose.train.vae`).

A step is either ``batch_size`` tiles (one random crop and flip each) or ``batch_size / 4`` 2x2 canvases of one
identity's views (one crop and flip per canvas), each canvas a full canvas (what the UNet's output decodes to), a
masked canvas (1-3 tiles black, as the image condition) or one view upscaled to the whole canvas (the FLC
reference), in equal parts. A fraction of the images have their RGB channels put in another order.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from imagpose import autoencoders
from imagpose.errors import InputFileError
from imagpose.images import load_image, pil_to_tensor, tensor_to_pil
from imagpose.io import read_json

from .config import StageConfig
from .data import seeded_generator

GRID = (2, 2)  # the official canvas
MAX_SCALE = 1.2  # random crops: zoom in by up to 20%, then a random offset (official ResizeAspect + RandomCrop)
HELD_OUT_TILES = 64  # held-out images scored for PSNR (test split, in file order)
HELD_OUT_CANVASES = 16  # held-out canvases of each kind
TASK_KEY = 7  # seeds the autoencoder's draws apart from the stages' (seeded_generator(seed, TASK_KEY, ...))
DATA_FIX = "create a dataset with `imagpose train make-data --out DIR`, or pass its folder"


def read_split_images(data_root: str | Path, split: str) -> list[torch.Tensor]:
    """The images of ``split`` ("train" / "test") as one (V, 3, H, W) tensor in [-1, 1] per identity."""
    root = Path(data_root)
    if not root.is_dir():
        raise InputFileError(f"Dataset folder {root} does not exist; {DATA_FIX}.")
    annotation = read_json(root / f"{split}.json", DATA_FIX)
    if not isinstance(annotation, list) or not all(isinstance(group, list) for group in annotation):
        raise InputFileError(f"{root / f'{split}.json'} is not a list of identities (lists of image paths); "
                             f"{DATA_FIX}.")
    identities = []
    for group in annotation:
        views = [pil_to_tensor(load_image(root / path, f"{split} image")) * 2 - 1 for path in group]
        if len({tuple(view.shape) for view in views}) > 1:
            raise InputFileError(f"The {split} images {group} of one person have different sizes "
                                 f"{sorted({tuple(view.shape[-2:]) for view in views})}; every image of a dataset "
                                 "has the same size.")
        if views:
            identities.append(torch.stack(views))
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


def random_colour(generator: torch.Generator) -> torch.Tensor:
    """An RGB colour in [0, 1]: half of the draws a corner of the colour cube (pure primaries, secondaries, black,
    white), the others uniform inside it."""
    if float(torch.rand(1, generator=generator)) < 0.5:
        return torch.randint(2, (3,), generator=generator).float()
    return torch.rand(3, generator=generator)


def colour_field(size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """A (3, H, W) image in [-1, 1] of flat colour: one colour, or a rectangle of one colour on another (a random
    box of 1/4 to 3/4 of each side). Saturated flat regions are what the generated people lack most."""
    height, width = size
    background, foreground = random_colour(generator), random_colour(generator)
    image = background[:, None, None].expand(3, height, width).clone()
    if float(torch.rand(1, generator=generator)) < 0.5:
        box_h = int(torch.randint(height // 4, 3 * height // 4 + 1, (1,), generator=generator))
        box_w = int(torch.randint(width // 4, 3 * width // 4 + 1, (1,), generator=generator))
        top = int(torch.randint(height - box_h + 1, (1,), generator=generator))
        left = int(torch.randint(width - box_w + 1, (1,), generator=generator))
        image[:, top:top + box_h, left:left + box_w] = foreground[:, None, None]
    return image * 2 - 1


def is_canvas_step(seed: int, step: int, canvas_fraction: float) -> bool:
    """Whether optimizer step ``step`` trains on canvases (a function of (seed, step) alone)."""
    return float(torch.rand(1, generator=seeded_generator(seed, TASK_KEY, step))) < canvas_fraction


class AutoencoderItems(torch.utils.data.Dataset):
    """Item ``(step, slot)``: a tile, or on canvas steps a canvas (with ``colour_fields``, that fraction replaced by
    a :func:`colour_field` of its size), and the posterior's N(0, I) draw for it."""

    def __init__(self, identities: list[torch.Tensor], seed: int, canvas_fraction: float, latent_noise: bool,
                 downscale: int, colour_permutation: float = 0.0, colour_fields: float = 0.0):
        self.identities, self.seed, self.canvas_fraction = identities, seed, canvas_fraction
        self.latent_noise, self.downscale, self.colour_permutation = latent_noise, downscale, colour_permutation
        self.colour_fields = colour_fields

    def __len__(self) -> int:
        return len(self.identities)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        step, slot = key
        generator = seeded_generator(self.seed, TASK_KEY, step, slot)
        if is_canvas_step(self.seed, step, self.canvas_fraction):
            pixels = random_canvas(self.identities, generator)
        else:
            pixels = random_tile(self.identities, generator)
        pixels = permute_colours(pixels, generator, self.colour_permutation)
        if self.colour_fields and float(torch.rand(1, generator=generator)) < self.colour_fields:
            pixels = colour_field(tuple(pixels.shape[-2:]), generator)
        item = {"pixels": pixels}
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
