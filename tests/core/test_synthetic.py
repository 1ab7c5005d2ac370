"""imagpose.synthetic: deterministic by seed, exact keypoints and masks, the trainer's dataset layout."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagpose.errors import InvalidArgumentError
from imagpose.pose import keypoints_from_json, render_pose
from imagpose.synthetic.dataset import identity_rng, make_dataset
from imagpose.synthetic.figure import JOINTS
from imagpose.synthetic.looks import sample_look, sample_scene
from imagpose.synthetic.poses import sample_pose
from imagpose.synthetic.rasterizer import draw_view

SIZE = (64, 48)  # (height, width): not square, so a swapped axis shows
VIEWS = 4
FACE_POINTS = {i for i, name in enumerate(JOINTS) if name in ("nose", "r_eye", "l_eye", "r_ear", "l_ear")}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "data"
    make_dataset(root, 8, seed=1, size=SIZE, views_per_identity=VIEWS, test_fraction=0.25)
    return root


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def people(root: Path) -> list[str]:
    return json.loads((root / "dataset.json").read_text())["train"] + json.loads(
        (root / "dataset.json").read_text())["test"]


def test_same_seed_same_bytes_and_first_identities_are_the_same_people(dataset, tmp_path):
    make_dataset(tmp_path / "again", 8, seed=1, size=SIZE, views_per_identity=VIEWS, test_fraction=0.25)
    assert files(tmp_path / "again") == files(dataset)  # every file, dataset.json included

    make_dataset(tmp_path / "smaller", 5, seed=1, size=SIZE, views_per_identity=VIEWS, test_fraction=0.25)
    smaller = {name: data for name, data in files(tmp_path / "smaller").items() if "/" in name}  # the people
    assert len(smaller) == 5 * (1 + 4 * VIEWS)  # a background and image/dwpose/keypoints/mask per view
    assert smaller == {name: files(dataset)[name] for name in smaller}

    make_dataset(tmp_path / "other", 2, seed=2, size=SIZE, views_per_identity=VIEWS)
    assert (tmp_path / "other/image/id0000/0.png").read_bytes() != (dataset / "image/id0000/0.png").read_bytes()


def test_layout_and_annotation_format(dataset):
    meta = json.loads((dataset / "dataset.json").read_text())
    assert {k: meta[k] for k in ("generator", "seed", "identities", "views_per_identity", "image_size")} == {
        "generator": "imagpose.synthetic", "seed": 1, "identities": 8, "views_per_identity": VIEWS,
        "image_size": list(SIZE)}
    for split in ("train", "test"):
        annotation = json.loads((dataset / f"{split}.json").read_text())
        assert [group[0].split("/")[1] for group in annotation] == meta[split]
        for group in annotation:
            name = group[0].split("/")[1]
            assert group == [f"image/{name}/{k}.png" for k in range(VIEWS)]  # official: paths relative to the root
            with Image.open(dataset / f"background/{name}.png") as background:
                assert (background.mode, background.size) == ("RGB", SIZE[::-1])
            for path in group:
                stem = path[len("image/"):-len(".png")]
                with Image.open(dataset / path) as image, Image.open(dataset / f"dwpose/{stem}.png") as pose, \
                        Image.open(dataset / f"mask/{stem}.png") as mask:
                    assert [(i.mode, i.size) for i in (image, pose, mask)] == [
                        ("RGB", SIZE[::-1]), ("RGB", SIZE[::-1]), ("L", SIZE[::-1])]
                    assert set(np.unique(np.asarray(mask))) <= {0, 255} and np.asarray(mask).max() == 255
                keypoints = keypoints_from_json(dataset / f"keypoints/{stem}.json")  # our openpose18 JSON
                assert (keypoints.width, keypoints.height) == SIZE[::-1]


def test_train_test_split_is_disjoint_by_identity(dataset, tmp_path):
    meta = json.loads((dataset / "dataset.json").read_text())
    assert len(meta["test"]) == 2 and not set(meta["train"]) & set(meta["test"])
    assert sorted(meta["train"] + meta["test"]) == sorted(p.name for p in (dataset / "image").iterdir())
    make_dataset(tmp_path / "all_train", 2, seed=1, size=(32, 32), views_per_identity=2, test_fraction=0.0)
    assert json.loads((tmp_path / "all_train/test.json").read_text()) == []


def test_files_are_what_the_renderer_drew(dataset):
    """Replaying identity i's generator through draw_view gives the stored image, mask and keypoints exactly, and
    the pose image is the official renderer's drawing of those keypoints."""
    for index in (0, 5):
        name = f"id{index:04d}"
        rng = identity_rng(1, index)
        look = sample_look(rng)
        scene = sample_scene(rng, look)
        for k in range(VIEWS):
            view = draw_view(look, sample_pose(rng, can_sit=scene.seat is not None), scene, SIZE)
            stored = json.loads((dataset / f"keypoints/{name}/{k}.json").read_text())
            assert stored == json.loads(json.dumps(view.keypoints.to_json()))
            for folder, image in (("image", view.image), ("mask", view.mask)):
                assert np.array_equal(np.asarray(Image.open(dataset / f"{folder}/{name}/{k}.png")), np.asarray(image))
            pose = render_pose(keypoints_from_json(dataset / f"keypoints/{name}/{k}.json"))
            assert np.array_equal(np.asarray(Image.open(dataset / f"dwpose/{name}/{k}.png")), np.asarray(pose))


def test_mask_covers_every_visible_keypoint(dataset):
    """Body joints lie on a person pixel; face points (on the head's outline in profile) within one pixel. People
    with an object in front of them are left out: it hides joints that are still in the frame."""
    meta = json.loads((dataset / "dataset.json").read_text())
    height, width = SIZE
    checked = 0
    for name in people(dataset):
        if meta["people"][name]["scene"]["front_object"] is not None:
            continue
        for k in range(VIEWS):
            mask = np.asarray(Image.open(dataset / f"mask/{name}/{k}.png")) == 255
            points = json.loads((dataset / f"keypoints/{name}/{k}.json").read_text())["keypoints"]
            for joint, (x, y, confidence) in enumerate(points):
                if confidence == 0:
                    assert (x, y) == (-1, -1)  # missing: outside the frame or a face point turned away
                    continue
                col, row = min(int(x), width - 1), min(int(y), height - 1)
                reach = 1 if joint in FACE_POINTS else 0
                assert mask[max(row - reach, 0):row + reach + 1, max(col - reach, 0):col + reach + 1].any(), \
                    (name, k, JOINTS[joint], x, y)
                checked += 1
    assert checked > 100


@pytest.mark.parametrize("arguments,match", [
    (dict(identities=0), "identities must be at least 1"),
    (dict(views_per_identity=1), "views_per_identity must be at least 2"),
    (dict(size=(16, 64)), r"16x64 \(HxW\) is too small"),
    (dict(test_fraction=1.0), r"test_fraction must be in \[0, 1\)"),
    (dict(size=(10**6, 10**6)), r"needs about 120000.0 GB of memory to render one person"),  # 10**12 pixels
    (dict(identities=10**10, size=(128, 96)), r"need about 737280.0 GB of files"),  # 737 TB: more than any test disk
])
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, arguments, match):
    with pytest.raises(InvalidArgumentError, match=match):
        make_dataset(tmp_path / "out", **{"identities": 2, **arguments})
    assert not (tmp_path / "out").exists()
