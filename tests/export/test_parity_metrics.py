"""SSIM and PSNR (torchmetrics) keep the definitions the parity tolerances were set with: the values below were
computed by the earlier hand-written implementation (valid 11x11 Gaussian windows, sigma 1.5, data range 1)."""

import json
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


@pytest.mark.slow
def test_fp16_backends_are_held_to_torch_fp16s_own_error(tiny_pipe, samples):
    """The fp16 tolerance: SQNR >= torch fp16's - 6 dB per component, SSIM >= min(0.98, torch fp16's - 0.01).
    (Slow: fp16 convolutions on a CPU.)"""
    import copy

    from imagpose import scenarios
    from imagpose.export.parity import CastRuntime, run_parity
    from tests.export.conftest import BUCKET

    pipe16 = copy.deepcopy(tiny_pipe).to(dtype=torch.float16)
    image, pose = samples("person_red_front")
    requests = [scenarios.t2(image, pose, samples("person_red_walking")[1], tile_size=(64, 64), seed=0)]
    yardstick = CastRuntime(pipe16.torch_runtime(), torch.float16)
    backends = {"fp16-copy": CastRuntime(pipe16.torch_runtime(), torch.float16, "fp16-copy"),
                "fp32-as-fp16": tiny_pipe.torch_runtime()}
    report = run_parity(tiny_pipe, backends, BUCKET, requests, steps=1, lowp_reference=yardstick,
                        lowp_backends=tuple(backends))
    print(report.format())
    by_name = {(c.backend, c.component): c for c in report.components}
    for component in ("unet", "vae_decoder"):
        reference = by_name["torch-fp16", component]
        assert reference.min_sqnr_db == -math.inf  # the yardstick is reported, not judged
        assert by_name["fp16-copy", component].min_sqnr_db == reference.sqnr_db - 6.0
    e2e = {e.backend: e for e in report.end_to_end}
    assert e2e["fp16-copy"].min_ssim == pytest.approx(min(0.98, e2e["torch-fp16"].ssim - 0.01))
    assert report.passed


def test_a_report_with_infinite_sqnr_is_strict_json(tmp_path):
    """Identical outputs give an infinite SQNR and the fp16 yardstick a -inf minimum; the JSON report must still be
    strict JSON (regression: the strict writer refused it)."""
    from imagpose.export.parity import ComponentParity, EndToEndParity, ParityReport
    from imagpose.io import write_json

    report = ParityReport("cpu", [ComponentParity("torch", "unet", 0.0, math.inf, -math.inf)],
                          [EndToEndParity("torch", 1.0, math.inf, 0.0, 0.999)])
    write_json(tmp_path / "parity.json", report.to_dict())
    data = json.loads((tmp_path / "parity.json").read_text())
    assert data["components"][0]["sqnr_db"] == "inf" and data["components"][0]["min_sqnr_db"] == "-inf"
