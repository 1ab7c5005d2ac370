"""Training data: the official annotation format, the data check, and the training items.

Annotation format (official ``prepare_data_for_deepfashion.py``): a JSON list of identities, each a list of image
paths (relative to the dataset folder, or absolute). The pose of ``.../image/X/k.png`` is the rendered pose image
``.../dwpose/X/k.png`` (official rule), or else the keypoint file ``.../keypoints/X/k.json`` (OpenPose JSON, drawn
with our renderer at the image's size).

:func:`check_dataset` reads every entry before training starts and returns what is usable and what was skipped,
with the reason (missing or unreadable image, missing or unreadable pose, pose of another size, identity with one
usable image), so nothing fails in the middle of a run.

A training item (official ``HumanPoseDataset``) for a ``rows x cols`` grid, as one dict of tensors:

    target_pixels    (3, Hc, Wc) in [-1, 1]   the whole canvas, every view shown
    masked_pixels    (3, Hc, Wc) in [-1, 1]   target tiles black (-1), as the pipeline's masked canvas
    pose             (3, Hc, Wc) in [0, 1]    every view's pose
    flag             (1, Hc/8, Wc/8)          1 on visible (source) tiles
    dino_pixels      (3, 224, 224)            the reference view for DINOv2 (CLIP-normalised)
    reference_pixels (3, Hc, Wc) in [-1, 1]   the reference view upscaled to the canvas, for the FLC tokenizer

Views are drawn with replacement from one identity (not all the same image); one random zoom-crop and one
horizontal flip apply to every tile and its pose; the FLC reference gets the crop but not the flip and DINOv2 sees
the unaugmented view (both as the official dataset). The canvases are made by the inference code
(:func:`imagpose.canvas.build_canvas`), so training and inference see the same layout.

Item ``n`` is a pure function of ``(seed, n)``: identities are visited in a fresh permutation each epoch and every
random draw of the item comes from a generator seeded by ``(seed, n)``. Resuming at sample ``n`` (and running on
any number of processes, each taking its rows of the global batch) therefore gives the same data.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePath

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from imagpose.canvas import PoseRequest, View, build_canvas
from imagpose.conditions import dino_pixels, reference_canvas_pixels
from imagpose.errors import InputFileError
from imagpose.images import ImageInputError, refused_mode
from imagpose.json_parsing import parse_json
from imagpose.pose import PoseError, keypoints_from_json, render_pose

from .masking import check_target_range, draw_reference, draw_targets

IMAGE_FOLDER, POSE_FOLDER, KEYPOINT_FOLDER = "image", "dwpose", "keypoints"
DATA_FIX = "make one with `imagpose train make-data --out DIR`, or see docs/training.md for the layout"


@dataclass(frozen=True)
class ViewFiles:
    """One usable image of an identity and its pose: a pose image, or else a keypoint file."""

    image: Path
    pose: Path
    size: tuple[int, int]  # (width, height) of the image, read by the data check


@dataclass
class DataReport:
    """What :func:`check_dataset` found: the usable identities and every skipped entry with its reason."""

    root: Path
    split: str
    entries: int
    identities: list[list[ViewFiles]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path or identity, reason)

    @property
    def images(self) -> int:
        return sum(len(views) for views in self.identities)

    def skip_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, reason in self.skipped:
            kind = reason.split(":")[0]
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def summary(self, limit: int = 10) -> str:
        lines = [f"{self.root / (self.split + '.json')}: {len(self.identities)} identities, {self.images} images "
                 f"usable of {self.entries} entries; {len(self.skipped)} skipped"]
        lines += [f"  {count} x {kind}" for kind, count in sorted(self.skip_counts().items())]
        lines += [f"  skipped {what}: {reason}" for what, reason in self.skipped[:limit]]
        if len(self.skipped) > limit:
            lines.append(f"  ... and {len(self.skipped) - limit} more")
        return "\n".join(lines)


def read_annotations(root: str | Path, split: str) -> list[list[str]]:
    """The ``split``.json list of identities; a malformed file is an error naming it (before anything trains)."""
    root = Path(root)
    if not root.is_dir():
        raise InputFileError(f"Dataset folder {root} does not exist; {DATA_FIX}.")
    path = root / f"{split}.json"
    if not path.is_file():
        raise InputFileError(f"{path} does not exist: a dataset needs {split}.json (a JSON list of identities, each a "
                             f"list of image paths); {DATA_FIX}.")
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{path} is not valid JSON ({exc}); it must be a list of lists of image paths.") from None
    if not isinstance(data, list) or not all(isinstance(i, list) and all(isinstance(p, str) for p in i)
                                             for i in data):
        raise InputFileError(f"{path} must be a JSON list of identities, each a list of image path strings "
                             '(e.g. [["image/id0/0.png", "image/id0/1.png"], ...]).')
    return data


def companion(image_path: str, folder: str, suffix: str) -> PurePath | None:
    """``.../image/X/k.png`` -> ``.../<folder>/X/k<suffix>`` (the last ``image`` folder of the path is replaced);
    None when the path has no ``image`` folder."""
    parts = PurePath(image_path).parts
    if IMAGE_FOLDER not in parts[:-1]:
        return None
    index = len(parts) - 2 - parts[:-1][::-1].index(IMAGE_FOLDER)
    replaced = PurePath(*parts[:index], folder, *parts[index + 1:])
    return replaced.with_suffix(suffix)


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) of a fully decoded image file (a truncated file fails here, not mid-run); an image the
    colour-mode rule refuses (16-bit, float) raises ImageInputError."""
    with Image.open(path) as image:
        if (problem := refused_mode(image.mode)) is not None:
            raise ImageInputError(problem)
        image.load()
        return image.size


def _not_a_file(path: Path) -> str | None:
    """Why ``path`` is not a regular file to read (None when it is): missing, a broken or looping symbolic link, a
    directory, or a device, pipe or socket (reading /dev/zero would never end)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"a broken symbolic link to {os.readlink(path)}" if os.path.islink(path) else "no such file"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISDIR(mode):
        return "a directory, not an image file"
    if not stat.S_ISREG(mode):
        return "not a regular file (a device, pipe or socket)"
    return None


def _check_view(root: Path, entry: str) -> ViewFiles | str:
    """The usable files of one annotation entry, or the reason it is skipped."""
    image = root / entry
    problem = _not_a_file(image)
    if problem == "no such file":
        return "missing image: no such file"
    if problem is not None:
        return f"unreadable image: {problem}"
    try:
        size = _image_size(image)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ImageInputError) as exc:
        return f"unreadable image: {exc}"
    rule = companion(entry, POSE_FOLDER, image.suffix)
    if rule is None:
        return (f"missing pose: the path has no {IMAGE_FOLDER}/ folder, so its pose cannot be found (the rule "
                f"{IMAGE_FOLDER}/ -> {POSE_FOLDER}/ or {KEYPOINT_FOLDER}/)")
    pose_image, keypoints = root / rule, root / companion(entry, KEYPOINT_FOLDER, ".json")
    if pose_image.is_file():
        try:
            pose_size = _image_size(pose_image)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ImageInputError) as exc:
            return f"unreadable pose: {pose_image}: {exc}"
        if pose_size != size:
            return (f"pose size mismatch: the image is {size[0]}x{size[1]}, {pose_image} is "
                    f"{pose_size[0]}x{pose_size[1]}")
        return ViewFiles(image, pose_image, size)
    if keypoints.is_file():
        try:
            keypoints_from_json(keypoints, *size)
        except PoseError as exc:
            return f"unreadable pose: {exc}"
        return ViewFiles(image, keypoints, size)
    return f"missing pose: neither {pose_image} nor {keypoints} exists"


def check_dataset(root: str | Path, split: str = "train") -> DataReport:
    """Read every entry of ``root/<split>.json``; keep identities with at least two usable images."""
    root = Path(root)
    annotations = read_annotations(root, split)
    report = DataReport(root=root, split=split, entries=sum(len(i) for i in annotations))
    for number, entries in enumerate(annotations):
        usable = []
        for entry in entries:
            checked = _check_view(root, entry)
            if isinstance(checked, str):
                report.skipped.append((entry, checked))
            else:
                usable.append(checked)
        sizes = sorted({view.size for view in usable})
        if len(usable) >= 2 and len(sizes) > 1:
            name = f"identity {number} ({entries[0]}, ...)"
            report.skipped.append((name, f"views of different sizes: {sizes}; a training item joins one person's "
                                         "views at one size, so resize them alike"))
        elif len(usable) >= 2:
            report.identities.append(usable)
        elif entries:
            name = f"identity {number} ({entries[0]}{', ...' if len(entries) > 1 else ''})"
            report.skipped.append((name, f"identity with one image: {len(usable)} usable image(s); a training item "
                                         "needs two views of one person"))
    if not report.identities:
        raise InputFileError(f"No usable identity for training. {report.summary()}\n"
                             f"Fix the files listed, or {DATA_FIX}.")
    return report


# ----------------------------------------------------------------------------- training items
def _load_view(files: ViewFiles) -> tuple[Image.Image, Image.Image]:
    """(person image, pose image), both RGB at the person image's size."""
    image = Image.open(files.image).convert("RGB")
    if files.pose.suffix == ".json":
        return image, render_pose(keypoints_from_json(files.pose, *image.size))
    return image, Image.open(files.pose).convert("RGB")


def seeded_generator(*key: int) -> torch.Generator:
    """A torch generator seeded from the tuple ``key`` (numpy's SeedSequence mixes it; nearby keys differ)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> 1))


@dataclass(frozen=True)
class Augmentation:
    """One zoom-crop (box in source pixels) and flip decision, applied to every tile of an item."""

    box: tuple[float, float, float, float]
    flip: bool

    @classmethod
    def draw(cls, generator: torch.Generator, size: tuple[int, int], max_scale: float, flip: bool) -> Augmentation:
        width, height = size
        scale = 1 + (max_scale - 1) * float(torch.rand(1, generator=generator))
        crop_w, crop_h = width / scale, height / scale
        left, top = (float(torch.rand(1, generator=generator)) * (width - crop_w),
                     float(torch.rand(1, generator=generator)) * (height - crop_h))
        flipped = flip and bool(torch.rand(1, generator=generator) < 0.5)
        return cls((left, top, left + crop_w, top + crop_h), flipped)

    def apply(self, image: Image.Image, size: tuple[int, int], resample, flip: bool = True) -> Image.Image:
        out = image.resize(size, resample, box=self.box)
        return out.transpose(Image.FLIP_LEFT_RIGHT) if flip and self.flip else out


class TrainingDataset(torch.utils.data.Dataset):
    """Training items of the identities of a :class:`DataReport` (see the module docstring).

    ``len()`` is one epoch (one item per identity); any index ``n >= 0`` is valid (epoch ``n // len``).
    ``pad_multiple`` / ``flc_patch_size`` are the model's (``IMAGPosePipeline.build_canvas``).
    """

    def __init__(self, report: DataReport, tile_size: tuple[int, int], grid: tuple[int, int] = (2, 2),
                 seed: int = 0, min_targets: int = 1, max_targets: int | None = None, max_scale: float = 1.0,
                 flip: bool = True, pad_multiple: int = 64, flc_patch_size: int = 16):
        self.identities = report.identities
        self.tile_size, self.grid, self.seed = tuple(tile_size), tuple(grid), seed
        self.num_views = self.grid[0] * self.grid[1]
        self.min_targets, self.max_targets = check_target_range(self.num_views, min_targets, max_targets)
        self.max_scale, self.flip = max_scale, flip
        self.pad_multiple, self.flc_patch_size = pad_multiple, flc_patch_size

    def __len__(self) -> int:
        return len(self.identities)

    @lru_cache(maxsize=4)  # noqa: B019 - a few epochs' permutations, freed with the dataset
    def _order(self, epoch: int) -> list[int]:
        return torch.randperm(len(self.identities), generator=seeded_generator(self.seed, 2**31, epoch)).tolist()

    def identity_of(self, n: int) -> int:
        return self._order(n // len(self.identities))[n % len(self.identities)]

    def draw_views(self, generator: torch.Generator, count: int) -> list[int]:
        """Indices of the identity's views for the tiles: with replacement, not all identical (official)."""
        while True:
            picks = torch.randint(count, (self.num_views,), generator=generator).tolist()
            if len(set(picks)) > 1:
                return picks

    def __getitem__(self, n: int) -> dict:
        if n < 0:
            raise IndexError(n)
        views = self.identities[self.identity_of(n)]
        generator = seeded_generator(self.seed, n)
        picks = self.draw_views(generator, len(views))
        targets = draw_targets(generator, self.num_views, self.min_targets, self.max_targets)
        reference = draw_reference(generator, [i for i in range(self.num_views) if i not in targets])
        loaded = {k: _load_view(views[k]) for k in set(picks)}
        augment = Augmentation.draw(generator, loaded[picks[0]][0].size, self.max_scale, self.flip)
        height, width = self.tile_size
        tiles = [(augment.apply(loaded[k][0], (width, height), Image.BICUBIC),
                  augment.apply(loaded[k][1], (width, height), Image.BILINEAR)) for k in picks]

        def canvas(hidden: list[int]):
            request = PoseRequest(views=[View.target(pose) if i in hidden else View.source(image, pose)
                                         for i, (image, pose) in enumerate(tiles)],
                                  grid=self.grid, tile_size=self.tile_size,
                                  reference=next(i for i in range(self.num_views) if i not in hidden))
            return build_canvas(request, self.pad_multiple, flc_patch_size=self.flc_patch_size)

        # every tile is a source in one of the two complementary requests; their disjoint tiles sum to the whole
        masked, complement = canvas(targets), canvas([i for i in range(self.num_views) if i not in targets])
        reference_image = loaded[picks[reference]][0]
        flc_reference = augment.apply(reference_image, (width, height), Image.BICUBIC, flip=False)
        return dict(
            target_pixels=(masked.person + complement.person) * 2 - 1,
            masked_pixels=masked.person * 2 - 1,
            pose=masked.pose,
            flag=masked.flag,
            dino_pixels=dino_pixels(reference_image),
            reference_pixels=reference_canvas_pixels(flc_reference, masked.layout.canvas_size),
            grid=self.grid,
        )


def collate(items: list[dict]) -> dict:
    """Stack items into a batch; every item of a batch has the same grid."""
    batch = {key: torch.stack([item[key] for item in items]) for key in items[0] if key != "grid"}
    batch["grid"] = items[0]["grid"]
    return batch


class StepBatches(torch.utils.data.Sampler):
    """The sample indices this process reads, one list per micro-batch, from optimizer step ``start_step`` on.

    The global batch of a step is ``batch_size * num_processes * accumulation`` consecutive sample indices; micro-batch
    ``a`` of process ``r`` takes ``batch_size`` of them at offset ``(a * num_processes + r) * batch_size``. One process
    with batch 4 and two with batch 2 therefore read the same samples, and resuming at a step reads what the
    uninterrupted run would have.
    """

    def __init__(self, start_step: int, steps: int, batch_size: int, process_index: int = 0, num_processes: int = 1,
                 accumulation: int = 1):
        self.start_step, self.steps = start_step, steps
        self.batch_size, self.process_index, self.num_processes = batch_size, process_index, num_processes
        self.accumulation = accumulation

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.num_processes * self.accumulation

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.accumulation

    def __iter__(self):
        for step in range(self.start_step, self.steps):
            for micro in range(self.accumulation):
                first = step * self.global_batch + (micro * self.num_processes + self.process_index) * self.batch_size
                yield list(range(first, first + self.batch_size))


def process_batches(dataset, start_step: int, settings, process_index: int, num_processes: int,
                    num_workers: int = 0) -> tuple[slice, int, torch.utils.data.DataLoader]:
    """(this process's rows of every global batch, the global batch size, a DataLoader over this process's
    micro-batches from ``start_step`` on) for a task of the training loop (``settings``: its StageConfig)."""
    rows = slice(process_index * settings.batch_size, (process_index + 1) * settings.batch_size)
    sampler = StepBatches(start_step, settings.steps, settings.batch_size, process_index, num_processes,
                          settings.gradient_accumulation_steps)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers)
    return rows, settings.batch_size * num_processes, loader
