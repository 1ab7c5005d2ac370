"""imagpose bench quality: every setting runs through the pipeline call users make, beside the default, and the
report's numbers follow from the generated tiles (the default against itself is exact; fewer steps cost fewer
FLOPs in proportion; the Pareto front and the budget verdict follow their definitions)."""

import json

import pytest

from imagpose.bench.quality import (
    DEFAULT,
    QualitySetting,
    SettingResult,
    best_at,
    mark_pareto,
    run_quality_bench,
    within_budget,
)
from imagpose.bench.quality_report import write_quality_report
from imagpose.errors import InvalidArgumentError
from imagpose.io import OutputFolder
from imagpose.pretrained import shipped_model_dir
from imagpose.sampling_config import SamplingConfig
from imagpose.synthetic.dataset import make_dataset


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    folder = tmp_path_factory.mktemp("heldout")
    make_dataset(folder, 3, seed=1000, size=(64, 64), test_fraction=0.999)  # small tiles: fast
    return folder


def test_a_small_run_scores_the_default_against_itself_exactly(heldout, tmp_path):
    settings = [DEFAULT, QualitySetting("unipc 4", SamplingConfig(num_inference_steps=4, sampler="unipc"))]
    results = run_quality_bench(shipped_model_dir(), heldout, settings, tmp_path / "work", max_items=2,
                                batch_size=2, progress=False, flop_preset="tiny")
    default, fast = results["results"]
    assert default["vs_default"] == {"ssim": 1.0, "psnr": 100.0} and default["speedup"] > 0
    assert fast["vs_default"]["ssim"] < 1.0
    assert default["drop"] == {m: 0.0 for m in default["drop"]}
    # the UNet dominates: 4 steps instead of 20 cost between 1/5 and all of the FLOPs
    assert 1.0 < fast["flop_ratio"] <= 5.0
    with OutputFolder(tmp_path / "report") as folder:
        write_quality_report(results, folder)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| unipc 4 |" in report and (tmp_path / "report" / "speed_quality.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "report" / "results.json").read_text())["items"] == 2


def _result(name, seconds, fidelity, ssim=0.6, pose=0.5):
    truth = {"ssim": ssim, "psnr": 10.0, "pose_iou": pose, "color_error": 1.0}
    return SettingResult(QualitySetting(name), seconds, 1.0, {"ssim": fidelity, "psnr": 30.0}, truth)


def test_pareto_front_best_at_and_budget_follow_their_definitions():
    results = [_result("default", 6.0, 1.0), _result("a", 2.0, 0.995), _result("b", 1.0, 0.95),
               _result("c", 2.5, 0.99), _result("d", 1.2, 0.992, pose=0.47), _result("e", 1.1, 0.97, ssim=0.58)]
    default = results[0]
    for r in results:
        r.speedup = default.seconds_per_image / r.seconds_per_image
        r.drop = {m: default.vs_ground_truth[m] - r.vs_ground_truth[m] for m in default.vs_ground_truth}
    mark_pareto(results)
    assert [r.setting.name for r in results if r.pareto] == ["default", "a", "b", "d", "e"]
    picks = best_at(results)
    # d and e are closer to the default than b at 5x, but d loses 0.03 pose IoU and e 0.02 SSIM: over the budget
    assert picks["2x"]["name"] == "a" and picks["3x"]["name"] == "a" and picks["5x"]["name"] == "b"
    assert [r["name"] for r in within_budget(results)] == ["a", "b"]


def test_unknown_sampler_or_unet_is_a_clear_error():
    with pytest.raises(InvalidArgumentError, match="sampler 'euler'"):
        QualitySetting("x", SamplingConfig(sampler="euler"))
    with pytest.raises(InvalidArgumentError, match="sampling must be a SamplingConfig"):
        QualitySetting("x", "euler")
    with pytest.raises(InvalidArgumentError, match="unet 'tensorrt-int4'"):
        QualitySetting("x", unet="tensorrt-int4")
