"""The measures of a generated image against its ground truth (imagpose.measures)."""

import pytest
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from imagpose.measures import MAX_PSNR_DB, color_error, foreground_mask, image_scores, mask_iou

TILE = (64, 48)  # (height, width)


def test_image_scores_are_torchmetrics_ssim_and_psnr():
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(3, *TILE, generator=generator)
    generated = (target + 0.1 * torch.randn(3, *TILE, generator=generator)).clamp(0, 1)
    scores = image_scores(generated, target)
    _, ssim_map = structural_similarity_index_measure(generated[None].double(), target[None].double(),
                                                      data_range=1.0, return_full_image=True)
    assert scores["ssim"] == pytest.approx(float(ssim_map[..., 5:-5, 5:-5].mean()), abs=1e-12)  # inner windows
    assert scores["psnr"] == pytest.approx(float(peak_signal_noise_ratio(generated[None].double(),
                                                                         target[None].double(), data_range=1.0)))
    assert image_scores(target, target) == {"ssim": pytest.approx(1.0), "psnr": MAX_PSNR_DB}


def test_mask_iou_on_known_masks():
    a = torch.zeros(8, 8, dtype=torch.bool)
    b = torch.zeros(8, 8, dtype=torch.bool)
    a[2:6, 0:4] = True
    b[2:6, 2:6] = True  # 8 pixels shared, 24 in the union
    assert mask_iou(a, b) == pytest.approx(1 / 3)
    assert mask_iou(a, a) == 1.0 and mask_iou(a, ~a) == 0.0
    assert mask_iou(torch.zeros_like(a), torch.zeros_like(a)) == 1.0


def test_foreground_is_what_differs_from_the_background():
    background = torch.full((3, 16, 16), 0.5)
    image = background.clone()
    image[:, 4:10, 3:9] = torch.tensor([0.9, 0.2, 0.2])[:, None, None]  # the person: a 6x6 block
    image[1, 13, 13] = 0.9  # a one-pixel speck, removed by the opening
    image[:, 2, 2] += 0.05  # a difference below the threshold
    block = torch.zeros(16, 16, dtype=torch.bool)
    block[4:10, 3:9] = True
    speck = torch.zeros(16, 16, dtype=torch.bool)
    speck[13, 13] = True
    assert torch.equal(foreground_mask(image, background, threshold=0.12, kernel=1), block | speck)
    rounded = block.clone()
    rounded[[4, 4, 9, 9], [3, 8, 3, 8]] = False  # the 3x3 ellipse is a cross: the opening rounds the corners
    assert torch.equal(foreground_mask(image, background, threshold=0.12, kernel=3), rounded)


def test_color_error_is_the_lab_distance_inside_the_mask():
    target = torch.zeros(3, 8, 8)
    generated = target.clone()
    generated[:, :4] = 1.0  # white over black: Delta E 100 (L 100 against 0, a = b = 0)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:2] = True
    assert color_error(generated, target, mask) == pytest.approx(100.0, abs=1e-3)
    mask[6:] = True  # as many pixels where the colours agree
    assert color_error(generated, target, mask) == pytest.approx(50.0, abs=1e-3)
