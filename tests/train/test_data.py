"""Training data: the data check on broken folders, the items (layout, determinism, shared augmentation), and the
step batches that make resuming and multi-process runs read the same samples."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from imagpose.canvas import GridLayout
from imagpose.errors import InputFileError
from imagpose.train.data import StepBatches, TrainingDataset, check_dataset, collate, companion

TINY_PAD = 32


@pytest.fixture
def copy(people_dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(people_dataset, root)
    return root


def entries(root):
    return json.loads((root / "train.json").read_text())


def test_a_clean_dataset_has_nothing_skipped(people_dataset):
    report = check_dataset(people_dataset)
    assert report.skipped == [] and report.images == report.entries == 4 * len(entries(people_dataset))


def test_every_broken_entry_is_counted_with_its_reason(copy):
    groups = entries(copy)
    (copy / groups[0][0]).unlink()  # missing image
    (copy / groups[0][1]).write_bytes((copy / groups[0][1]).read_bytes()[:60])  # truncated image
    (copy / companion(groups[1][0], "dwpose", ".png")).unlink()  # pose image gone, keypoints remain: still usable
    (copy / companion(groups[1][1], "dwpose", ".png")).unlink()
    (copy / companion(groups[1][1], "keypoints", ".json")).unlink()  # no pose at all
    Image.new("RGB", (32, 32)).save(copy / companion(groups[1][2], "dwpose", ".png"))  # pose of another size
    (copy / companion(groups[1][3], "dwpose", ".png")).write_text("not an image")  # unreadable pose
    for path in groups[2][1:]:  # an identity left with one image
        (copy / path).unlink()
    groups.append(["elsewhere/x.png"])  # a path without image/ (its pose cannot be found): missing file first
    (copy / "train.json").write_text(json.dumps(groups))

    report = check_dataset(copy)
    reasons = dict(report.skipped)
    assert reasons[groups[0][0]].startswith("missing image")
    assert reasons[groups[0][1]].startswith("unreadable image")
    assert reasons[groups[1][1]].startswith("missing pose")
    assert reasons[groups[1][2]].startswith("pose size mismatch")
    assert reasons[groups[1][3]].startswith("unreadable pose")
    assert groups[1][0] not in reasons  # rendered from its keypoints instead
    assert any(what.startswith("identity 2") and why.startswith("identity with one image") for what, why in
               report.skipped)
    # identities 1 (one good view left), 2 and the stray path have fewer than two usable images
    assert report.skip_counts() == {"missing image": 5, "unreadable image": 1, "missing pose": 1,
                                    "pose size mismatch": 1, "unreadable pose": 1, "identity with one image": 3}
    assert len(report.identities) == len(groups) - 3
    assert "skipped" in report.summary() and "identity with one image" in report.summary()
    # and the kept identities make items without error
    dataset = TrainingDataset(report, (64, 64), seed=0, pad_multiple=TINY_PAD)
    for n in range(2 * len(dataset)):
        dataset[n]


def test_a_deeply_nested_keypoint_file_is_skipped_with_its_reason(copy):
    entry = entries(copy)[0][0]
    (copy / companion(entry, "dwpose", ".png")).unlink()
    (copy / companion(entry, "keypoints", ".json")).write_text("[" * 100_000)
    assert "nested too deeply" in dict(check_dataset(copy).skipped)[entry]


def test_a_person_of_several_sizes_and_16_bit_images_are_skipped_with_their_reasons(copy):
    groups = entries(copy)
    for path in (groups[0][0], companion(groups[0][0], "dwpose", ".png")):  # image and pose resized alike
        with Image.open(copy / path) as image:
            image.resize((image.width // 2, image.height // 2)).save(copy / path)
    with Image.open(copy / groups[1][0]) as image:
        image.convert("L").convert("I;16").save(copy / groups[1][0])  # a 16-bit PNG
    report = check_dataset(copy)
    reasons = dict(report.skipped)
    assert reasons[groups[1][0]] == "unreadable image: mode I;16 (16-bit or float) is not supported; save it as " \
                                    "8-bit RGB"
    assert report.skip_counts()["views of different sizes"] == 1
    assert len(report.identities) == len(groups) - 1  # identity 1 keeps its three 8-bit views


@pytest.mark.parametrize("text, match", [("{", "not valid JSON"), ("[" * 100_000, "nested too deeply"),
                                         ('{"a": 1}', "list of identities"),
                                         ("[[1, 2]]", "list of identities")])
def test_a_malformed_annotation_file_is_an_error_naming_it(copy, text, match):
    (copy / "train.json").write_text(text)
    with pytest.raises(InputFileError, match=match) as error:
        check_dataset(copy)
    assert "train.json" in str(error.value)


def test_no_usable_identity_is_an_error_with_the_report(copy, tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        check_dataset(tmp_path / "nowhere")
    (copy / "train.json").write_text(json.dumps([["image/nobody/0.png", "image/nobody/1.png"]]))
    with pytest.raises(InputFileError, match="(?s)No usable identity.*train.json.*missing image"):
        check_dataset(copy)


def test_items_are_canvases_of_one_person_a_function_of_seed_and_index(people_dataset):
    report = check_dataset(people_dataset)
    dataset = TrainingDataset(report, (64, 64), seed=5, pad_multiple=TINY_PAD, max_scale=1.2)
    item = dataset[3]
    layout = GridLayout(2, 2, 64, 64, TINY_PAD, 8)
    assert item["target_pixels"].shape == item["masked_pixels"].shape == item["pose"].shape == (3, 128, 128)
    assert item["flag"].shape == (1, 16, 16) and item["dino_pixels"].shape == (3, 224, 224)
    assert item["reference_pixels"].shape == (3, 128, 128) and item["grid"] == (2, 2)
    flag = item["flag"].repeat_interleave(8, dim=-2).repeat_interleave(8, dim=-1)  # to pixel resolution
    hidden = [i for i in range(4) if layout.crop(flag, i).max() == 0]
    assert 1 <= len(hidden) <= 3
    for i in range(4):
        masked, full = layout.crop(item["masked_pixels"], i), layout.crop(item["target_pixels"], i)
        assert torch.equal(masked, torch.full_like(masked, -1.0)) if i in hidden else torch.equal(masked, full)
    again = TrainingDataset(report, (64, 64), seed=5, pad_multiple=TINY_PAD, max_scale=1.2)[3]
    assert all(torch.equal(item[k], again[k]) for k in item if k != "grid")
    other = TrainingDataset(report, (64, 64), seed=6, pad_multiple=TINY_PAD, max_scale=1.2)[3]
    assert not torch.equal(item["target_pixels"], other["target_pixels"])


def test_each_epoch_visits_every_identity_once(people_dataset):
    dataset = TrainingDataset(check_dataset(people_dataset), (64, 64), seed=0, pad_multiple=TINY_PAD)
    for epoch in range(3):
        assert sorted(dataset.identity_of(epoch * len(dataset) + k) for k in range(len(dataset))) == \
            list(range(len(dataset)))


def test_one_flip_for_every_tile_and_its_pose(people_dataset):
    """With flips on, a flipped item's tiles are the mirror images of the unflipped item's (same draws otherwise)."""
    report = check_dataset(people_dataset)
    plain = TrainingDataset(report, (64, 64), seed=1, pad_multiple=TINY_PAD, flip=False)
    flipping = TrainingDataset(report, (64, 64), seed=1, pad_multiple=TINY_PAD, flip=True)
    layout = GridLayout(2, 2, 64, 64, TINY_PAD, 8)
    flipped = 0
    for n in range(12):
        a, b = plain[n], flipping[n]
        tiles_a = [layout.crop(a[k], i) for k in ("target_pixels", "pose") for i in range(4)]
        tiles_b = [layout.crop(b[k], i) for k in ("target_pixels", "pose") for i in range(4)]
        same = [torch.equal(x, y) for x, y in zip(tiles_a, tiles_b)]
        mirrored = [torch.equal(x.flip(-1), y) for x, y in zip(tiles_a, tiles_b)]
        assert all(same) or all(mirrored)
        flipped += all(mirrored) and not all(same)
    assert 0 < flipped < 12


def test_views_come_from_one_identity_with_replacement_not_all_identical(people_dataset):
    report = check_dataset(people_dataset)
    dataset = TrainingDataset(report, (64, 64), seed=0, pad_multiple=TINY_PAD)
    repeats = 0
    for n in range(40):
        picks = dataset.draw_views(torch.Generator().manual_seed(n), 4)
        assert len(set(picks)) > 1
        repeats += len(set(picks)) < 4
    assert repeats > 0  # with replacement: a view may appear twice


def test_collate_stacks_items(people_dataset):
    dataset = TrainingDataset(check_dataset(people_dataset), (64, 64), seed=0, pad_multiple=TINY_PAD)
    batch = collate([dataset[0], dataset[1]])
    assert batch["target_pixels"].shape == (2, 3, 128, 128) and batch["grid"] == (2, 2)


def test_step_batches_split_the_global_batch_and_resume_where_they_stopped():
    one = list(StepBatches(0, 3, batch_size=4))
    two = [list(StepBatches(0, 3, batch_size=2, process_index=r, num_processes=2)) for r in range(2)]
    for step in range(3):
        assert sorted(two[0][step] + two[1][step]) == one[step]
    assert list(StepBatches(2, 3, batch_size=4)) == one[2:]
    accumulated = list(StepBatches(0, 2, batch_size=2, accumulation=2))
    assert [i for micro in accumulated for i in micro] == list(range(8)) and len(accumulated) == 4
    assert np.array_equal(sum(one, []), np.arange(12))


def test_images_that_are_not_regular_files_are_skipped_with_what_they_are(copy):
    groups = entries(copy)
    device, loop, folder, broken = (copy / path for path in groups[0][:4])
    for path in (device, loop, folder, broken):
        path.unlink()
    device.symlink_to("/dev/zero")  # reading it would never end
    loop.symlink_to(loop.name)  # points at itself
    folder.symlink_to(copy / "image")  # a directory
    broken.symlink_to(copy / "nowhere.png")
    reasons = dict(check_dataset(copy).skipped)
    assert reasons[groups[0][0]] == "unreadable image: not a regular file (a device, pipe or socket)"
    assert reasons[groups[0][1]] == "unreadable image: a symbolic link loop"
    assert reasons[groups[0][2]] == "unreadable image: a directory, not an image file"
    assert reasons[groups[0][3]] == f"unreadable image: a broken symbolic link to {copy / 'nowhere.png'}"
