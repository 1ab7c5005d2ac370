"""`imagpose bench --model DIR`: the IMAGPose rows time the pipeline folder's weights (not the random preset) at the
tile size its training record names, FLOPs are counted on its architecture (from its configs, on meta), the report
names it, and a folder that is not a pipeline is a one-line error before anything runs."""

import json

import pytest
import torch

import imagpose
from imagpose.bench.harness import run_scenario
from imagpose.bench.scenarios import build_suite
from imagpose.cli import main

TILE = [64, 48]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny architecture with seed-3 weights (not the preset's seed 0), recorded as trained on 64x48 tiles."""
    folder = tmp_path_factory.mktemp("bench_model") / "people"
    imagpose.build_pipeline("tiny", seed=3).save_pretrained(folder)
    (folder / "training.json").write_text(json.dumps({"tile_size": TILE}))
    return folder


def test_imagpose_rows_time_the_model(model_dir, one_thread):
    scenario, baseline = build_suite(["imagpose", "pidm"], ["as_released"], quick=True, model=str(model_dir))
    assert baseline.model is None  # the baselines stay random-weight re-implementations
    timed = []
    result = run_scenario(scenario, warmup=0, backend_factory=lambda method, setting: timed.append(method))
    assert result.error is None, result.error
    expected = imagpose.build_pipeline("tiny", seed=3)
    for name in ("unet", "vae", "image_encoder", "flc_tokenizer", "pose_guider"):
        ours, theirs = getattr(timed[0].pipe, name).state_dict(), getattr(expected, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    assert list(result.setting["resolution"]) == TILE  # the training tiles, not the quick run's halved 128x88
    # counted on meta from the folder's configs: the tiny architecture, far below sd15's 36.5 TFLOP per pass
    assert 0 < result.tflops_per_image_full < 0.05


def test_report_names_the_model(model_dir, tmp_path, capsys, one_thread):
    out = tmp_path / "report"
    code = main(["bench", "--quick", "--methods", "imagpose", "--settings", "as_released", "--fast-paths", "eager",
                 "--warmup", "0", "--no-sdk", "--model", str(model_dir), "--out", str(out)])
    print(capsys.readouterr())
    assert code == 0
    markdown = (out / "report.md").read_text()
    assert f"IMAGPose weights: model `{model_dir}`, **trained**" in markdown and "64x48" in markdown
    assert f"vs fp32 PyTorch, {model_dir}, 64x48 tiles" in markdown
    data = json.loads((out / "results.json").read_text())
    assert data["imagpose_weights"] == {"model": str(model_dir), "weights": "trained", "tile_size": TILE}
    assert data["results"][0]["scenario"]["model"] == str(model_dir) and data["results"][0]["error"] is None


def test_a_missing_model_folder_is_one_line(tmp_path, capsys):
    out, missing = tmp_path / "report", tmp_path / "no_such_model"
    code = main(["bench", "--quick", "--methods", "imagpose", "--model", str(missing), "--out", str(out)])
    err = capsys.readouterr().err
    print(err)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("imagpose bench: error: ") and f"{missing} is not an imagpose pipeline folder" in err
    assert not out.exists()


@pytest.mark.slow  # an ONNX export of the model (~15 s); the default tier covers the section's heading
def test_parity_runs_on_the_model(model_dir, tmp_path, one_thread):
    from imagpose.bench.fast_paths import fast_path_parity

    parity = fast_path_parity(["eager", "onnxruntime"], "cpu", tmp_path / "work", model_dir=model_dir, steps=2)
    print(parity)
    assert (parity["model"], parity["tile_size"]) == (str(model_dir), TILE)
    [row] = parity["rows"]
    assert row["backend"] == "onnxruntime" and row["final_ssim"] >= 0.999 and len(row["sqnr_db_per_step"]) == 2
    assert (tmp_path / "work" / "onnx" / "fp32" / "unet.onnx").is_file()
