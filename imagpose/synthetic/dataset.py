"""make_dataset: generated people in the trainer's dataset layout (``image/ dwpose/ keypoints/ mask/ background/
train.json test.json dataset.json``), split into train/test by identity."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from imagpose.errors import InvalidArgumentError
from imagpose.io import OutputFolder
from imagpose.pose import render_pose

from .looks import sample_look, sample_scene
from .poses import sample_pose
from .rasterizer import draw_view, render_scene

GENERATOR_VERSION = 1
MIN_SIDE = 32  # pixels: smaller people are a few pixels wide and carry no look
# Peak memory while one person renders, per view pixel (tracemalloc: 118 at 128x96, 90 at 512x384)
RENDER_BYTES_PER_PIXEL = 120
# Files written per view pixel (image, mask, keypoints, pose image: 0.47 measured at 128x96 on the PNGs these
# flat-shaded people compress to); twice that, so the refusal errs towards writing
FILE_BYTES_PER_PIXEL = 1.0


@dataclass
class DatasetSummary:
    root: Path
    seed: int
    image_size: tuple[int, int]
    views_per_identity: int
    train: list[str]
    test: list[str]
    seconds: float
    pose_families: dict[str, int] = field(default_factory=dict)

    @property
    def identities(self) -> int:
        return len(self.train) + len(self.test)

    @property
    def images(self) -> int:
        return self.identities * self.views_per_identity


def identity_name(index: int, count: int) -> str:
    return f"id{index:0{max(4, len(str(count - 1)))}d}"


def identity_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of identity ``index``: its look, scene and poses depend on (seed, index) only."""
    return np.random.default_rng([seed, index])


def _check_dataset_arguments(identities: int, size, views_per_identity: int, test_fraction: float) -> None:
    if identities < 1:
        raise InvalidArgumentError(f"identities must be at least 1, got {identities}.")
    if views_per_identity < 2:
        raise InvalidArgumentError(f"views_per_identity must be at least 2 (training draws several views of one "
                                   f"person), got {views_per_identity}.")
    if min(size) < MIN_SIDE:
        raise InvalidArgumentError(f"size {size[0]}x{size[1]} (HxW) is too small: people need at least "
                                   f"{MIN_SIDE}x{MIN_SIDE} pixels to carry a look.")
    if not 0.0 <= test_fraction < 1.0:
        raise InvalidArgumentError(f"test_fraction must be in [0, 1), got {test_fraction}.")


def _check_resources(out: str | os.PathLike, identities: int, size: tuple[int, int], views_per_identity: int) -> None:
    """Refuse, before anything is written, a dataset whose rendering needs more memory than is available or
    whose files need more than the disk holding ``out`` has free."""
    pixels = size[0] * size[1]
    needed = pixels * RENDER_BYTES_PER_PIXEL
    available = _available_memory()
    if available is not None and needed > available:
        raise InvalidArgumentError(f"size {size[0]}x{size[1]} (HxW) needs about {needed / 1e9:.1f} GB of memory to "
                                   f"render one person and {available / 1e9:.1f} GB is available; use a smaller "
                                   "size (the recipes train on 128x96).")
    needed = identities * views_per_identity * pixels * FILE_BYTES_PER_PIXEL
    folder = Path(out).absolute()
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise InvalidArgumentError(f"{identities} identities x {views_per_identity} views at {size[0]}x{size[1]} "
                                   f"need about {needed / 1e9:.1f} GB of files and {folder} has {free / 1e9:.1f} GB "
                                   "free; generate fewer identities or write to a larger disk.")


def _available_memory() -> int | None:
    """Bytes of memory available now (None where the OS does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _split(seed: int, names: list[str], test_fraction: float) -> tuple[list[str], list[str]]:
    count = round(len(names) * test_fraction)
    if test_fraction > 0 and len(names) >= 2:
        count = min(max(count, 1), len(names) - 1)
    order = np.random.default_rng([seed, 2**31]).permutation(len(names))  # a stream no identity uses
    test = sorted(names[i] for i in order[:count])
    held_out = set(test)
    return [n for n in names if n not in held_out], test


def make_dataset(out: str | os.PathLike, identities: int, seed: int = 0, size: tuple[int, int] = (64, 64),
                 views_per_identity: int = 6, test_fraction: float = 0.1) -> DatasetSummary:
    """Generate ``identities`` people with ``views_per_identity`` views each into ``out`` (the trainer's dataset
    layout), split into train/test by identity. Files go beside what ``out`` holds, all at once at the end."""
    size = (int(size[0]), int(size[1]))
    _check_dataset_arguments(identities, size, views_per_identity, test_fraction)
    _check_resources(out, identities, size, views_per_identity)
    start = time.perf_counter()
    names = [identity_name(i, identities) for i in range(identities)]
    train, test = _split(seed, names, test_fraction)
    people, families = {}, {}
    with OutputFolder(out) as folder:
        for index, name in enumerate(names):
            rng = identity_rng(seed, index)
            look = sample_look(rng)
            scene = sample_scene(rng, look)
            background, front = render_scene(scene, size)
            views = []
            for k in range(views_per_identity):
                pose = sample_pose(rng, can_sit=scene.seat is not None)
                view = draw_view(look, pose, scene, size, background, front)
                folder.save_image(f"image/{name}/{k}.png", view.image)
                folder.save_image(f"dwpose/{name}/{k}.png", render_pose(view.keypoints))
                folder.save_image(f"mask/{name}/{k}.png", view.mask)
                folder.write_json(f"keypoints/{name}/{k}.json", view.keypoints.to_json())
                views.append({"pose": pose.family, "edge_cut": pose.edge_cut})
                families[pose.family] = families.get(pose.family, 0) + 1
            folder.save_image(f"background/{name}.png", view.background)
            people[name] = {"look": asdict(look), "scene": asdict(scene), "views": views}
        for split, members in (("train", train), ("test", test)):
            folder.write_json(f"{split}.json", [[f"image/{n}/{k}.png" for k in range(views_per_identity)]
                                                for n in members])
        folder.write_json("dataset.json", {
            "generator": "imagpose.synthetic", "version": GENERATOR_VERSION, "seed": seed,
            "identities": identities, "views_per_identity": views_per_identity, "image_size": list(size),
            "test_fraction": test_fraction, "train": train, "test": test, "people": people,
        })
    return DatasetSummary(root=Path(out), seed=seed, image_size=size, views_per_identity=views_per_identity,
                          train=train, test=test, seconds=time.perf_counter() - start, pose_families=families)
