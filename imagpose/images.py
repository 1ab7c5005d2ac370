"""Image input: loading, colour-mode rules and tensor conversion.

Files are decoded as they are displayed: the EXIF orientation of a phone photo is applied on load (images
passed as PIL images or arrays are taken as they are). Files declaring more than ``PIL.Image.MAX_IMAGE_PIXELS``
pixels are refused before decoding (decompression bombs).

Colour-mode rule (stated once, applied everywhere):
    - RGB is used as is; CMYK / YCbCr / palette without transparency are converted to RGB;
    - grayscale (``L``, ``1``) is replicated to 3 channels;
    - images with transparency (``RGBA``, ``LA``, ``PA``, palette with a transparent colour) are
      alpha-composited onto a solid background: white for person images (the DeepFashion studio backdrop),
      black for pose images (the renderer's background);
    - 16-bit and float modes (``I``, ``I;16``, ``F``) are refused: their value range is ambiguous.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputFileError

PERSON_BACKGROUND = (255, 255, 255)
POSE_BACKGROUND = (0, 0, 0)
_REFUSED_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class ImageInputError(InputFileError):
    """An input image that cannot be read or has an unsupported format."""


def load_image(source: str | os.PathLike | Image.Image | np.ndarray, what: str = "image",
               background: tuple[int, int, int] = PERSON_BACKGROUND) -> Image.Image:
    """Return an RGB PIL image from a path, a PIL image or an (H, W[, C]) uint8 array (see module rule)."""
    if isinstance(source, (str, os.PathLike)):
        image = _open_file(Path(source), what)
    elif isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3):
            raise ImageInputError(f"{what}: arrays must be uint8 (H, W) or (H, W, C), got {source.dtype} "
                                  f"{source.shape}.")
        image = Image.fromarray(source)
    else:
        raise ImageInputError(f"{what}: expected a path, PIL image or uint8 array, got {type(source).__name__}.")
    return to_rgb(image, what, background)


def _open_file(path: Path, what: str) -> Image.Image:
    """Decode an image file as it is displayed (EXIF orientation applied), refusing decompression bombs."""
    if not path.exists():
        raise ImageInputError(f"{what}: file not found: {path}; check the path.")
    if path.is_dir():
        raise ImageInputError(f"{what}: {path} is a directory; pass an image file.")
    if not path.is_file():
        raise ImageInputError(f"{what}: {path} is not a regular file (a device, pipe or socket); pass an image file.")
    return decode_image(path, f"{what}: {path}")


def decode_image(source: str | os.PathLike | BinaryIO, label: str) -> Image.Image:
    """The image in a file or a binary stream (a server's request bytes), EXIF orientation applied; ``label`` names
    it in errors. A header declaring more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels is refused before anything
    is decoded (PIL itself only warns up to twice that), and so is anything PIL cannot decode."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as handle:
                handle.load()
                return ImageOps.exif_transpose(handle)  # phone photos: pixels as shown, not as stored
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageInputError(
            f"{label} declares more than {Image.MAX_IMAGE_PIXELS:,} pixels (PIL.Image.MAX_IMAGE_PIXELS) and "
            "was not decoded: it could be a decompression bomb. Downscale it (it is resized to the tile size "
            "anyway), or raise PIL.Image.MAX_IMAGE_PIXELS for a file you trust.") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
        # PIL's decoders report corrupt data with any of these (SyntaxError from the PNG chunk reader, struct.error
        # from truncated headers)
        raise ImageInputError(f"{label} is not a readable image ({exc}).") from exc


def refused_mode(mode: str) -> str | None:
    """Why an image of PIL ``mode`` is refused by the colour-mode rule, or None when it is accepted."""
    if mode in _REFUSED_MODES:
        return f"mode {mode} (16-bit or float) is not supported; save it as 8-bit RGB"
    return None


def to_rgb(image: Image.Image, what: str = "image", background=PERSON_BACKGROUND) -> Image.Image:
    if (problem := refused_mode(image.mode)) is not None:
        raise ImageInputError(f"{what}: {problem}.")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """uint8 RGB PIL -> float32 (3, H, W) in [0, 1] (diffusers ``VaeImageProcessor``: ``x / 255``)."""
    return VaeImageProcessor.numpy_to_pt(VaeImageProcessor.pil_to_numpy(image))[0].contiguous()


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] -> PIL images, rounding ``x * 255`` (diffusers ``VaeImageProcessor``), clamped first."""
    return VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(images.detach().float().cpu().clamp(0, 1)))
