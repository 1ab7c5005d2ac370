"""The benchmark harness and report: exact FLOP accounting, extrapolation, per-image division, verdicts."""

import json

import pytest
import torch

from imagpose.bench.harness import count_generation_flops, run_scenario
from imagpose.bench.meter import FlopMeter, StageRecord, TimeMeter
from imagpose.bench.report import verdicts, write_report
from imagpose.bench.scenarios import Scenario, build_suite, resolve_setting
from imagpose.cli import main
from imagpose.errors import InvalidArgumentError


def test_imagpose_full_size_flops_match_the_reference_budget():
    """baselines.md section 5: 1.65 TFLOP per CFG step and ~36.5 TFLOP per pass at the 512x384 canvas."""
    flops = count_generation_flops("imagpose", Scenario("imagpose"), "full", "cpu")
    print({k: round(v / 1e12, 3) for k, v in flops.items()})
    assert flops["denoiser"] / 20 / 1e12 == pytest.approx(1.646, rel=0.01)
    assert sum(flops.values()) / 1e12 == pytest.approx(36.5, rel=0.02)


def test_meter_extrapolates_loops_and_reports_it():
    meter = TimeMeter(loop_limit=2)
    for _ in range(meter.runs(20)):
        with meter.stage("denoiser", repeat=20):
            pass
    record = meter.stages["denoiser"]
    assert record.executed == 2 and record.repeat == 20 and record.extrapolated
    assert StageRecord("x", 3, 3, 6.0).per_generation == 6.0


def test_meter_sums_a_stage_entered_several_times_per_generation():
    """The pipeline's encoders are 5 calls per request, each in the "encoders" stage: they add up."""
    a, b = torch.zeros(4, 8, device="meta"), torch.zeros(8, 16, device="meta")  # 2*4*8*16 = 1024 FLOPs per mm
    with FlopMeter(loop_limit=2) as meter:
        for _ in range(3):
            with meter.stage("encoders"):
                torch.mm(a, b)
        for _ in range(meter.runs(20)):
            with meter.stage("denoiser", repeat=20):
                torch.mm(a, b)
    assert meter.stages["encoders"].per_generation == 3 * 1024 and not meter.stages["encoders"].extrapolated
    assert meter.stages["denoiser"].executed == 2 and meter.stages["denoiser"].per_generation == 20 * 1024


def test_quick_scenario_runs_and_divides_per_image(one_thread):
    # the tiny preset (at the released 256x176 tiles) stands in for "reduced": same harness path, seconds not minutes
    result = run_scenario(Scenario("imagpose_star", "as_released", "tiny", batch=2, loop_limit=1), warmup=0)
    assert result.error is None, result.error
    assert set(result.stage_seconds) == {"encoders", "denoiser", "vae_decode"}
    assert result.stage_extrapolated["denoiser"] and not result.stage_extrapolated["encoders"]
    assert result.setting["images_per_pass"] == 3
    full = count_generation_flops("imagpose", Scenario("imagpose", batch=2), "full", "cpu")
    assert result.tflops_per_image_full == pytest.approx(sum(full.values()) / (2 * 3) / 1e12, rel=1e-6)
    assert result.achieved_tflops_per_s > 0


def test_settings_resolve_as_documented():
    from imagpose.bench.imagpose_method import RELEASED

    common = resolve_setting(RELEASED, "common_policy", "full", "cuda")
    assert common.resolution == (256, 192) and common.steps == 20 and common.precision == "fp16"
    assert resolve_setting(RELEASED, "as_released", "reduced", "cpu").precision == "fp32"
    quick = build_suite(backends=("eager", "onnxruntime"), quick=True)
    assert len(quick) == 12 + 2 and all(s.size == "reduced" and s.loop_limit == 2 for s in quick)
    assert {s.label for s in quick if s.backend != "eager"} == {"imagpose[onnxruntime]/as_released/reduced",
                                                                "imagpose_star[onnxruntime]/as_released/reduced"}
    with pytest.raises(InvalidArgumentError, match="Unknown setting 'fastest'; choose from as_released"):
        resolve_setting(RELEASED, "fastest", "full", "cpu")


def _fake(method, setting, seconds, tflops):
    return {"label": f"{method}/{setting}", "method": method, "scenario": {"setting": setting, "backend": "eager",
            "size": "full"}, "setting": {"resolution": [256, 192], "steps": 20, "precision": "fp16"},
            "seconds_per_image": seconds, "tflops_per_image_full": tflops, "tflops_per_image_measured_size": tflops,
            "stage_seconds": {"denoiser": seconds}, "stage_extrapolated": {"denoiser": False},
            "achieved_tflops_per_s": tflops / seconds, "mfu": None, "peak_memory_gib": 1.0, "error": None}


def test_verdicts_and_report_files(tmp_path):
    results = [_fake("imagpose", "as_released", 1.0, 36.5), _fake("imagpose_star", "as_released", 0.34, 12.2),
               _fake("pidm", "as_released", 7.0, 112.0), _fake("pocold", "as_released", 1.2, 14.1),
               _fake("cfld", "as_released", 3.1, 122.5)]
    rows = {(r["imagpose"], r["baseline"]): r for r in verdicts(results)}
    assert rows[("IMAGPose", "PIDM")]["holds"] and rows[("IMAGPose", "PIDM")]["time_ratio"] == 7.0
    assert not rows[("IMAGPose", "PoCoLD")]["holds"]
    assert "fewer FLOPs" in rows[("IMAGPose", "PoCoLD")]["why"]
    assert rows[("IMAGPose*", "PoCoLD")]["holds"]
    sdk = {"device": "x", "preset": "mid", "tile": [128, 88], "precision": "fp32", "steps": 2, "requests": 4,
           "max_batch": 4, "sdk_mean_batch": 4.0, "repeats": 1, "sequential_requests_per_s": 0.5,
           "sdk_requests_per_s": 0.6, "speedup": 1.2}
    out = tmp_path / "new" / "report"  # created, parents too
    paths = write_report({"environment": {"device": "cpu", "cpu": "x", "threads": 2, "torch": "t", "diffusers": "d",
                                          "date": "now"}, "results": results}, out, sdk_throughput=sdk)
    assert all(p.is_file() for p in paths.values())
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())  # no temporary files
    markdown = paths["md"].read_text()
    assert "Verdict" in markdown
    assert "| 0.5 | 0.6 | 1.20x |" in markdown and "Device: **x**" in markdown
    data = json.loads(paths["json"].read_text())
    assert data["verdicts"] and data["sdk_throughput"] == sdk
    paths["md"].unlink()
    assert main(["bench", "report", str(out)]) == 0  # re-rendered from results.json alone
    assert paths["md"].read_text() == markdown
