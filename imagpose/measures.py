"""How close a generated image is to its ground truth: the measures of the held-out evaluation
(``imagpose train eval``), the quality benchmark (``imagpose bench quality``) and the autoencoder's report.

All images are (3, H, W) float tensors in [0, 1] RGB.
    ssim         torchmetrics SSIM (11x11 Gaussian window, sigma 1.5, data range 1), averaged over the windows
                 inside the tile (the 5-pixel border of the map cropped, as imagpose's parity SSIM)
    psnr         torchmetrics PSNR (data range 1), capped at MAX_PSNR_DB (identical images would be infinite)
    pose_iou     IoU of the person's foreground against the exact person mask; the foreground of an image is where
                 it differs from the scene's background by more than ``threshold`` in some channel, opened then
                 closed with a ``kernel`` x ``kernel`` ellipse
    color_error  mean CIE76 colour difference (Lab, OpenCV's sRGB conversion) inside the person mask (lower is
                 better; about 2.3 is a just-noticeable difference)
OpenCV and torchmetrics are imported when a measure runs, so the command line can read the defaults cheaply.
"""

from __future__ import annotations

import numpy as np
import torch

MEASURES = ("ssim", "psnr", "pose_iou", "color_error")
LOWER_IS_BETTER = frozenset({"color_error"})
MAX_PSNR_DB = 100.0
DEFAULT_THRESHOLD = 0.12  # 31 levels of 255
DEFAULT_KERNEL = 3
SSIM_BORDER = 5  # half the 11x11 window


def image_scores(generated: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """SSIM and PSNR of one (3, H, W) image in [0, 1] against the target."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    x, y = generated[None].double(), target[None].double()
    _, ssim_map = structural_similarity_index_measure(x, y, gaussian_kernel=True, sigma=1.5, kernel_size=11,
                                                      data_range=1.0, return_full_image=True)
    # torchmetrics averages over every pixel of its reflect-padded map; windows inside the tile only (Wang et al.)
    border = SSIM_BORDER if min(target.shape[-2:]) > 2 * SSIM_BORDER else 0
    ssim = ssim_map[..., border:ssim_map.shape[-2] - border, border:ssim_map.shape[-1] - border].mean()
    psnr = peak_signal_noise_ratio(x, y, data_range=1.0)
    return {"ssim": float(ssim), "psnr": min(float(psnr), MAX_PSNR_DB)}


def foreground_mask(image: torch.Tensor, background: torch.Tensor, threshold: float = DEFAULT_THRESHOLD,
                    kernel: int = DEFAULT_KERNEL) -> torch.Tensor:
    """(H, W) bool: where the (3, H, W) image differs from the background by more than ``threshold`` in some
    channel, then a morphological opening (drops specks) and closing (fills pinholes) with a small ellipse."""
    import cv2

    raw = ((image - background).abs().amax(dim=0) > threshold).numpy().astype(np.uint8)
    if kernel > 1:
        element = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel, kernel))
        raw = cv2.morphologyEx(raw, cv2.MORPH_OPEN, element)
        raw = cv2.morphologyEx(raw, cv2.MORPH_CLOSE, element)
    return torch.from_numpy(raw.astype(bool))


def mask_iou(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """Intersection over union of two (H, W) bool masks (1.0 when both are empty)."""
    from torchmetrics.functional.classification import binary_jaccard_index

    return float(binary_jaccard_index(predicted.long().flatten(), target.long().flatten(), zero_division=1.0))


def to_lab(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) sRGB in [0, 1] -> (H, W, 3) CIE Lab (L in [0, 100])."""
    import cv2

    rgb = image.clamp(0, 1).permute(1, 2, 0).contiguous().numpy().astype(np.float32)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)


def color_error(generated: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean CIE76 colour difference (Euclidean distance in Lab) over the pixels of ``mask``."""
    distance = np.linalg.norm(to_lab(generated) - to_lab(target), axis=-1)
    return float(distance[mask.numpy()].mean())


def scores(generated: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, background: torch.Tensor,
           threshold: float = DEFAULT_THRESHOLD, kernel: int = DEFAULT_KERNEL) -> dict[str, float]:
    """Every measure of ``generated`` against ``target`` (``mask``: the target's (H, W) bool person mask,
    ``background``: its scene without the person)."""
    values = image_scores(generated, target)
    values["pose_iou"] = mask_iou(foreground_mask(generated, background, threshold, kernel), mask)
    values["color_error"] = color_error(generated, target, mask)
    return values
