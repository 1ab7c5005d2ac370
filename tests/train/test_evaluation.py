"""imagpose.train.evaluation: the measures on known inputs, the untrained and copy-source baselines, and what an
evaluation writes (summary.json, scores.csv, strips of three equal tiles, the figure)."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio

from imagpose import build_pipeline
from imagpose.errors import IMAGPoseError, InputFileError
from imagpose.images import tensor_to_pil
from imagpose.measures import MAX_PSNR_DB, MEASURES, foreground_mask, mask_iou
from imagpose.synthetic.dataset import make_dataset
from imagpose.train.evaluation import companion, evaluate, format_table, random_pipeline_like

TILE = (64, 48)  # (height, width)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("eval") / "model"
    build_pipeline("tiny").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Six people, one held out; test.json also holds a second 'identity': view 0 of the held-out person and an
    exact copy of it (view 9), so copying the source reproduces that item's ground truth."""
    root = tmp_path_factory.mktemp("eval") / "data"
    make_dataset(root, 6, seed=1, size=TILE, views_per_identity=4)
    (person,) = json.loads((root / "dataset.json").read_text())["test"]
    for folder, suffix in (("image", ".png"), ("dwpose", ".png"), ("mask", ".png"), ("keypoints", ".json")):
        shutil.copy(root / folder / person / f"0{suffix}", root / folder / person / f"9{suffix}")
    test = json.loads((root / "test.json").read_text())
    test.append([f"image/{person}/0.png", f"image/{person}/9.png"])
    (root / "test.json").write_text(json.dumps(test))
    return root


@pytest.fixture(scope="module")
def evaluated(model_dir, dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "out"
    return evaluate(model_dir, dataset, out, steps=2, max_items=2, seed=0), out


# ----------------------------------------------------------------------------- measures
def test_untrained_baseline_is_the_preset_at_its_random_init():
    trained_like = build_pipeline("tiny", seed=5)
    untrained, reference = random_pipeline_like(trained_like), build_pipeline("tiny")
    for name in ("unet", "vae", "pose_guider", "flc_tokenizer", "image_encoder"):
        ours, theirs = getattr(untrained, name).state_dict(), getattr(reference, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_companion_follows_the_official_path_rule(tmp_path):
    assert companion(tmp_path, "image/id0/3.png", "mask", ".png") == tmp_path / "mask/id0/3.png"
    absolute = companion(tmp_path, "/data/df/image/id0/3.jpg", "keypoints", ".json")
    assert absolute == Path("/data/df/keypoints/id0/3.json")
    assert companion(tmp_path, "people/image/a/b/3.png", "dwpose", ".png") == tmp_path / "people/dwpose/a/b/3.png"
    with pytest.raises(InputFileError, match="not inside an image/ folder"):
        companion(tmp_path, "photos/3.png", "mask", ".png")


# ----------------------------------------------------------------------------- evaluate
def test_summary_has_every_measure_of_the_model_and_both_baselines(evaluated):
    evaluation, out = evaluated
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"model", "untrained", "copy_source", "std", "model_beats_copy_source",
                            "segmentation_check", "counts", "settings", "seconds_per_image"}
    for name in ("model", "untrained", "copy_source"):  # the mean of every measure, under the generator's name
        assert list(summary[name]) == list(MEASURES) and list(summary["std"][name]) == list(MEASURES)
    assert summary["counts"] == {"items": 2, "identities": 1}
    # the model under test is the tiny preset at its random init, i.e. exactly the untrained baseline
    assert summary["model"] == summary["untrained"]
    assert set(summary["model_beats_copy_source"]) == set(MEASURES)
    assert summary["segmentation_check"]["ground_truth_iou"] > 0.8  # the pose measure sees the true silhouette


def test_copy_source_on_a_known_case(evaluated, dataset):
    """Item 1 copies view 0 onto its exact copy: perfect image scores, no colour error, and the pose IoU of the
    ground truth's own foreground. Item 0's copy-source scores are those of the source file against the target."""
    evaluation, out = evaluated
    copy = evaluation.items[1]
    assert copy.source_path.endswith("/0.png") != copy.target_path.endswith("/0.png")
    expected = mask_iou(foreground_mask(copy.target, copy.background), copy.mask)
    assert copy.scores["copy_source"] == {"ssim": pytest.approx(1.0), "psnr": MAX_PSNR_DB, "color_error": 0.0,
                                          "pose_iou": pytest.approx(expected)}
    item = evaluation.items[0]
    source, target = (torch.from_numpy(np.array(Image.open(dataset / p).convert("RGB"))).permute(2, 0, 1) / 255
                      for p in (item.source_path, item.target_path))
    assert item.scores["copy_source"]["psnr"] == pytest.approx(float(peak_signal_noise_ratio(
        source[None].double(), target[None].double(), data_range=1.0)))
    with open(out / "scores.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(row["item"], row["generator"]) for row in rows] == [
        (i.name, g) for i in evaluation.items for g in ("model", "untrained", "copy_source")]
    assert float(rows[2]["psnr"]) == pytest.approx(item.scores["copy_source"]["psnr"], rel=1e-5)


def test_strips_are_source_ground_truth_generated(evaluated, dataset):
    evaluation, out = evaluated
    assert sorted(p.stem for p in (out / "strips").iterdir()) == [item.name for item in evaluation.items]
    height, width = TILE
    for item in evaluation.items:
        strip = np.asarray(Image.open(out / "strips" / f"{item.name}.png"))
        assert strip.shape == (height, 3 * width, 3)
        tiles = [strip[:, i * width:(i + 1) * width] for i in range(3)]
        assert np.array_equal(tiles[0], np.asarray(Image.open(dataset / item.source_path)))
        assert np.array_equal(tiles[1], np.asarray(Image.open(dataset / item.target_path)))
        assert np.array_equal(tiles[2], np.asarray(tensor_to_pil(item.generated["model"][None])[0]))
    with Image.open(out / "figure.png") as figure:  # a header row over one row of 4 tiles per item
        assert figure.width == 4 * width and figure.height > 2 * height


def test_table_columns_line_up(evaluated):
    evaluation, _ = evaluated
    lines = evaluation.table().splitlines()
    table = lines[:-1]  # the last line is the item count and the segmentation check
    assert len({len(line) for line in table}) == 1, lines
    assert [line.split()[0] for line in table[2:]] == ["model", "untrained", "copy_source", "model"]
    assert format_table(evaluation.summary) == evaluation.table()


def test_bad_inputs_are_user_errors(model_dir, dataset, tmp_path):
    with pytest.raises(IMAGPoseError, match="Dataset folder .* does not exist"):
        evaluate(model_dir, tmp_path / "missing", steps=2)
    shutil.copytree(dataset, tmp_path / "no_test", ignore=shutil.ignore_patterns("test.json"))
    with pytest.raises(IMAGPoseError, match="test.json is missing"):
        evaluate(model_dir, tmp_path / "no_test", tmp_path / "out", steps=2)
    assert not (tmp_path / "out").exists()
    (tmp_path / "no_test" / "test.json").write_text('[["image/id0000/0.png", 3]]')
    with pytest.raises(InputFileError, match="is not a list of identities"):
        evaluate(model_dir, tmp_path / "no_test", steps=2)
    with pytest.raises(IMAGPoseError, match="Model folder .* does not exist"):
        evaluate(tmp_path / "no_model", dataset, steps=2)
