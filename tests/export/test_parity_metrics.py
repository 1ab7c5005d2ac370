"""SSIM and PSNR (torchmetrics) keep the definitions the parity tolerances were set with: the values below were
computed by the earlier hand-written implementation (valid 11x11 Gaussian windows, sigma 1.5, data range 1)."""

import math

import pytest
import torch

from imagpose.export.parity import psnr, sqnr_db, ssim

# (shape, noise) -> (SSIM, PSNR dB) of the hand-written implementation
EXPECTED = [(((1, 3, 64, 48), 0.05), (0.9851809843, 26.2321116)), (((2, 3, 32, 32), 0.2), (0.8238083596, 15.0027990)),
            (((1, 3, 128, 96), 0.01), (0.9993696076, 39.9913826)), (((1, 1, 40, 40), 0.5), (0.4710528636, 9.2708216))]


def _pairs():
    generator = torch.Generator().manual_seed(0)
    for (shape, noise), expected in EXPECTED:
        a = torch.rand(shape, generator=generator)
        yield a, (a + noise * torch.randn(shape, generator=generator)).clamp(0, 1), expected
    ramp = torch.linspace(0, 1, 64 * 64).reshape(1, 1, 64, 64).expand(1, 3, 64, 64)
    yield ramp, ramp * 0.9 + 0.05, (0.9914536622, 30.7896913)  # smooth: border handling matters most here


@pytest.mark.parametrize("index", range(len(EXPECTED) + 1))
def test_ssim_and_psnr_match_the_stated_definition(index):
    reference, test, (expected_ssim, expected_psnr) = list(_pairs())[index]
    assert ssim(reference, test) == pytest.approx(expected_ssim, abs=1e-6)
    assert psnr(reference, test) == pytest.approx(expected_psnr, abs=1e-5)
    assert ssim(reference[0], test[0]) == pytest.approx(ssim(reference[:1], test[:1]), abs=1e-12)  # (C, H, W)


def test_identical_images():
    image = torch.rand(1, 3, 32, 32)
    assert ssim(image, image) == pytest.approx(1.0, abs=1e-12)
    assert psnr(image, image) == math.inf and sqnr_db(image, image) == math.inf
