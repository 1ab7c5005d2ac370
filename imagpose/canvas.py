"""The ILC joint canvas: views -> masked person canvas, pose canvas and flag channel (paper Sec. 3.3).

Layout (official ``concat_big_img``): R x C equal tiles pasted row-major, tile 0 top-left. A source view
shows its person image; a target view is black in the person canvas. Every view shows its pose in the pose
canvas. The flag channel, at latent resolution, is 1 on source tiles and 0 on target tiles (the opposite of
SD-inpainting's mask polarity). Views are resized to the tile size first (PIL bilinear, aspect squash, as the
official ``transforms.Resize((H, W))``); keypoint poses are rendered directly at the tile size.

Tiles whose sides are not multiples of ``pad_multiple`` (:func:`pad_multiple_for`: 64 for SD1.5, e.g. the
paper's 256x176 and 512x352) are padded symmetrically - person tiles by edge replication, pose tiles with
black - and cropped back after decoding. The official code cannot run such tiles at all. Each side of the latent
canvas must hold one FLC patch (16 latent pixels): :func:`check_layout` names the smallest tile for the grid.

Shapes (Hc, Wc = canvas pixels, f = VAE factor 8):
    person (3, Hc, Wc) float32 in [0, 1]      pose (3, Hc, Wc) float32 in [0, 1]
    flag   (1, Hc/f, Wc/f) float32 in {0, 1}
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import InvalidArgumentError
from .images import POSE_BACKGROUND, ImageInputError, load_image, pil_to_tensor
from .pose import Keypoints, keypoints_from_json, render_pose
from .seeds import check_seed

SOURCE = "source"
TARGET = "target"
MIN_TILE = 8  # pixels per tile side
FLC_PATCH_SIZE = 16  # the official FLC PatchEmbedding: Conv2d(4, D, 16, stride 16)


def pad_multiple_for(vae_scale: int, unet_levels: int) -> int:
    """Tile sides, in pixels, are padded to multiples of this: ``vae_scale`` (pixels per latent) times
    2**(``unet_levels`` - 1), so every UNet level splits the canvas into equal views (8 x 2**3 = 64 for SD1.5)."""
    return vae_scale * 2 ** (unet_levels - 1)


class CanvasError(InvalidArgumentError):
    """A request whose views cannot form a joint canvas."""


PoseInput = Image.Image | Keypoints | str | os.PathLike | np.ndarray


@dataclass
class View:
    """One tile of the grid: a source (person image + its pose) or a target (pose only).

    ``pose`` is a pose image (path/PIL/array), :class:`~imagpose.pose.Keypoints`, or a ``.json`` keypoint file.
    """

    pose: PoseInput
    image: str | os.PathLike | Image.Image | np.ndarray | None = None

    @classmethod
    def source(cls, image, pose: PoseInput) -> View:
        return cls(pose=pose, image=image)

    @classmethod
    def target(cls, pose: PoseInput) -> View:
        return cls(pose=pose, image=None)

    @property
    def role(self) -> str:
        return SOURCE if self.image is not None else TARGET


@dataclass
class PoseRequest:
    """One generation request: ``grid`` rows x cols views (row-major), at least one source and one target.

    Attributes:
        views: the tiles, row-major.
        grid: (rows, cols); the official model is trained on 2x2.
        tile_size: (height, width) in pixels; default: the first source image's size.
        seed: initial-noise seed; None draws one (reported in the result).
        reference: index of the source view whose image feeds DINOv2 and the FLC tokenizer (default: first
            source, as the official ``test.py``).
        name: optional label carried into results and file names.
    """

    views: list[View]
    grid: tuple[int, int] = (2, 2)
    tile_size: tuple[int, int] | None = None
    seed: int | None = None
    reference: int | None = None
    name: str | None = None

    @property
    def source_indices(self) -> list[int]:
        return [i for i, v in enumerate(self.views) if v.role == SOURCE]

    @property
    def target_indices(self) -> list[int]:
        return [i for i, v in enumerate(self.views) if v.role == TARGET]


@dataclass(frozen=True)
class GridLayout:
    """Geometry of a canvas: grid, tile size, padding. All boxes are (top, left, bottom, right) in pixels."""

    rows: int
    cols: int
    tile_height: int
    tile_width: int
    pad_multiple: int = 64
    vae_scale: int = 8

    @property
    def num_views(self) -> int:
        return self.rows * self.cols

    @property
    def padded_tile(self) -> tuple[int, int]:
        m = self.pad_multiple
        return -(-self.tile_height // m) * m, -(-self.tile_width // m) * m

    @property
    def pad_top_left(self) -> tuple[int, int]:
        ph, pw = self.padded_tile
        return (ph - self.tile_height) // 2, (pw - self.tile_width) // 2

    @property
    def is_padded(self) -> bool:
        return self.padded_tile != (self.tile_height, self.tile_width)

    @property
    def canvas_size(self) -> tuple[int, int]:
        ph, pw = self.padded_tile
        return self.rows * ph, self.cols * pw

    @property
    def latent_size(self) -> tuple[int, int]:
        h, w = self.canvas_size
        return h // self.vae_scale, w // self.vae_scale

    def tile_box(self, index: int) -> tuple[int, int, int, int]:
        ph, pw = self.padded_tile
        r, c = divmod(index, self.cols)
        return r * ph, c * pw, (r + 1) * ph, (c + 1) * pw

    def content_box(self, index: int) -> tuple[int, int, int, int]:
        top, left, _, _ = self.tile_box(index)
        pt, pl = self.pad_top_left
        return top + pt, left + pl, top + pt + self.tile_height, left + pl + self.tile_width

    def crop(self, canvas: torch.Tensor, index: int) -> torch.Tensor:
        """(..., Hc, Wc) canvas -> (..., tile_height, tile_width) content of tile ``index``."""
        top, left, bottom, right = self.content_box(index)
        return canvas[..., top:bottom, left:right]


@dataclass
class JointCanvas:
    layout: GridLayout
    person: torch.Tensor  # (3, Hc, Wc) in [0, 1], targets black (the "masked joint image")
    pose: torch.Tensor  # (3, Hc, Wc) in [0, 1]
    flag: torch.Tensor  # (1, Hc/8, Wc/8), 1 = source tile
    reference: Image.Image  # reference source at tile size (unpadded) for DINOv2 / FLC
    roles: tuple[str, ...] = field(default_factory=tuple)

    @property
    def target_indices(self) -> list[int]:
        return [i for i, r in enumerate(self.roles) if r == TARGET]


def _load_pose(pose: PoseInput, what: str, size: tuple[int, int] | None) -> Image.Image | Keypoints:
    """``size`` = (width, height) of the paired person image, used by size-less keypoint JSON."""
    if isinstance(pose, Keypoints):
        return pose
    if isinstance(pose, (str, os.PathLike)) and Path(pose).suffix.lower() == ".json":
        return keypoints_from_json(pose, *(size or (None, None)))
    if isinstance(pose, np.ndarray) and pose.shape in ((18, 2), (18, 3)) and pose.dtype != np.uint8:
        raise ImageInputError(f"{what}: a {pose.shape} {pose.dtype} array is OpenPose-18 keypoints, which need the "
                              "size of the image they were measured on: pass Keypoints.from_array(points, width, "
                              "height) (imagpose.pose).")
    return load_image(pose, what, background=POSE_BACKGROUND)


def _resize(image: Image.Image, width: int, height: int) -> Image.Image:
    return image if image.size == (width, height) else image.resize((width, height), Image.BILINEAR)


def _pad(tile: np.ndarray, layout: GridLayout, mode: str) -> np.ndarray:
    if not layout.is_padded:
        return tile
    ph, pw = layout.padded_tile
    top, left = layout.pad_top_left
    widths = ((top, ph - layout.tile_height - top), (left, pw - layout.tile_width - left), (0, 0))
    return np.pad(tile, widths, mode=mode)


def check_grid(grid: tuple[int, int]) -> None:
    """A grid holds at least one source and one target view."""
    rows, cols = grid
    if rows < 1 or cols < 1 or rows * cols < 2:
        raise CanvasError(f"A grid needs at least 2 views (one source and one target), got {rows}x{cols}; the "
                          "official model uses 2x2.")


def validate_request(request: PoseRequest) -> None:
    check_grid(request.grid)
    rows, cols = request.grid
    if len(request.views) != rows * cols:
        raise CanvasError(
            f"A {rows}x{cols} grid needs exactly {rows * cols} views, got {len(request.views)}; use a scenario "
            "helper (imagpose.scenarios) to fill the grid, or change grid=."
        )
    if not request.source_indices:
        raise CanvasError("The request has no source view (a view with a person image); add at least one.")
    if not request.target_indices:
        raise CanvasError("The request has no target view (a view with a pose only); add at least one.")
    if request.reference is not None and request.reference not in request.source_indices:
        raise CanvasError(f"reference={request.reference} is not a source view (sources: {request.source_indices}).")
    if request.seed is not None:
        check_seed(request.seed, "seed")
    if request.tile_size is not None and (
            not isinstance(request.tile_size, (tuple, list)) or len(request.tile_size) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in request.tile_size)):
        raise CanvasError(f"tile_size must be two integers (height, width) in pixels, e.g. (128, 96), got "
                          f"{request.tile_size!r}.")
    if request.tile_size is not None and (request.tile_size[0] < MIN_TILE or request.tile_size[1] < MIN_TILE):
        raise CanvasError(f"tile_size must be at least {MIN_TILE}x{MIN_TILE} pixels, got {request.tile_size}.")


def check_layout(layout: GridLayout, flc_patch_size: int = FLC_PATCH_SIZE) -> None:
    """Refuse a canvas too small for the model, with the smallest tile that works on this grid.

    The FLC tokenizer cuts the reference latent, resized to the whole latent canvas, into ``flc_patch_size``
    squares, so each side of the latent canvas (rows x padded tile height / VAE factor, likewise for width) must
    hold at least one patch; smaller canvases fail inside its convolution.
    """
    latent_h, latent_w = layout.latent_size
    if latent_h >= flc_patch_size and latent_w >= flc_patch_size:
        return
    need = flc_patch_size * layout.vae_scale  # canvas pixels per side
    min_h = _min_tile_side(need, layout.rows, layout.pad_multiple)
    min_w = _min_tile_side(need, layout.cols, layout.pad_multiple)
    canvas_h, canvas_w = layout.canvas_size
    raise CanvasError(
        f"A {layout.rows}x{layout.cols} grid of {layout.tile_height}x{layout.tile_width} tiles makes a "
        f"{canvas_h}x{canvas_w} canvas (tiles padded to multiples of {layout.pad_multiple}) whose {latent_h}x{latent_w}"
        f" latent is smaller than the FLC tokenizer's {flc_patch_size}x{flc_patch_size} patch; on a "
        f"{layout.rows}x{layout.cols} grid this model needs tiles of at least {min_h}x{min_w} pixels (HEIGHTxWIDTH)."
    )


def _min_tile_side(need: int, count: int, pad_multiple: int) -> int:
    """Smallest tile side whose padded size, ``count`` times over, covers ``need`` canvas pixels."""
    padded = -(-need // count)
    multiples = -(-padded // pad_multiple)
    return max((multiples - 1) * pad_multiple + 1, MIN_TILE)


def build_canvas(request: PoseRequest, pad_multiple: int = 64, vae_scale: int = 8,
                 flc_patch_size: int = FLC_PATCH_SIZE) -> JointCanvas:
    """Assemble the joint canvas of a request (pure image work, no model).

    ``pad_multiple``, ``vae_scale`` and ``flc_patch_size`` are the model's (``IMAGPosePipeline.build_canvas``).
    """
    validate_request(request)
    images: dict[int, Image.Image] = {}
    poses: dict[int, Image.Image | Keypoints] = {}
    for i, view in enumerate(request.views):
        if view.image is not None:
            images[i] = load_image(view.image, f"view {i} person image")
        poses[i] = _load_pose(view.pose, f"view {i} pose", images[i].size if i in images else None)
    for i, image in images.items():
        pose = poses[i]
        pose_size = (pose.width, pose.height) if isinstance(pose, Keypoints) else pose.size
        if pose_size != image.size:
            raise CanvasError(
                f"View {i}: person image is {image.size[0]}x{image.size[1]} but its pose is "
                f"{pose_size[0]}x{pose_size[1]}; a source's pose must be measured on the same image."
            )
    first_source = request.source_indices[0]
    tile_h, tile_w = request.tile_size or images[first_source].size[::-1]
    layout = GridLayout(request.grid[0], request.grid[1], tile_h, tile_w, pad_multiple, vae_scale)
    check_layout(layout, flc_patch_size)

    canvas_h, canvas_w = layout.canvas_size
    person = np.zeros((canvas_h, canvas_w, 3), dtype=np.uint8)
    pose_canvas = np.zeros((canvas_h, canvas_w, 3), dtype=np.uint8)
    flag = torch.zeros(1, canvas_h // vae_scale, canvas_w // vae_scale)
    roles = []
    for i, view in enumerate(request.views):
        top, left, bottom, right = layout.tile_box(i)
        pose = poses[i]
        pose_tile = (render_pose(pose, tile_w, tile_h) if isinstance(pose, Keypoints)
                     else _resize(pose, tile_w, tile_h))
        pose_canvas[top:bottom, left:right] = _pad(np.asarray(pose_tile), layout, "constant")
        if i in images:
            person[top:bottom, left:right] = _pad(np.asarray(_resize(images[i], tile_w, tile_h)), layout, "edge")
            flag[:, top // vae_scale:bottom // vae_scale, left // vae_scale:right // vae_scale] = 1.0
        roles.append(view.role)
    reference_index = first_source if request.reference is None else request.reference
    return JointCanvas(
        layout=layout,
        person=pil_to_tensor(Image.fromarray(person)),
        pose=pil_to_tensor(Image.fromarray(pose_canvas)),
        flag=flag,
        reference=_resize(images[reference_index], tile_w, tile_h),
        roles=tuple(roles),
    )
