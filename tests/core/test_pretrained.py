"""The trained model shipped in the package: present, small, loadable, and the demo's default."""

import json

from imagpose.cli import main
from imagpose.pipeline import IMAGPosePipeline
from imagpose.pretrained import SHIPPED_MODEL, shipped_model_dir, trained_tile_size, training_record

MAX_BYTES = 20 * 2**20


def test_the_shipped_model_is_a_small_pipeline_folder_with_its_training_record():
    folder = shipped_model_dir()
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    assert size < MAX_BYTES, f"{size / 2**20:.1f} MiB"
    record = training_record(folder)
    assert record["tile_size"] == list(trained_tile_size(folder)) and record["grid"] == [2, 2]
    assert set(record["evaluation"]) >= {"model", "untrained", "copy_source"}
    pipe = IMAGPosePipeline.from_pretrained(folder)
    assert pipe.unet.config.block_out_channels == [32, 32, 64]  # the tiny architecture
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"  # the schedule it was trained on


def test_the_demo_runs_the_shipped_model_by_default_and_the_random_preset_on_request(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "trained"), "--steps", "1", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "trained" / "summary.json").read_text())
    assert summary["model"].startswith(SHIPPED_MODEL) and summary["note"] == ""
    tile = trained_tile_size(shipped_model_dir())
    t2 = next(s for s in summary["scenarios"] if s["name"] == "t2")
    assert t2["tile_size"] == [tile[0], round(tile[0] * 176 / 256)]  # the samples' aspect at the trained height
    assert main(["demo", "--preset", "tiny", "--out", str(tmp_path / "random"), "--steps", "1",
                 "--no-progress"]) == 0
    summary = json.loads((tmp_path / "random" / "summary.json").read_text())
    assert "random weights" in summary["model"] and "noise" in summary["note"]
