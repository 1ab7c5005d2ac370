import json

import numpy as np
import pytest

from imagpose.pose import COLORS, LIMB_DIMMING, Keypoints, PoseError, keypoints_from_json, render_pose

FRONT = [(88, 42), (88, 62), (68, 64), (62, 98), (58, 130), (108, 64), (114, 98), (118, 130), (77, 132),
         (76, 180), (75, 228), (99, 132), (100, 180), (101, 228), (84, 38), (92, 38), (79, 40), (97, 40)]


def test_joints_full_colour_limbs_dimmed_background_black():
    kp = Keypoints.from_array(FRONT, 176, 256)
    image = np.asarray(render_pose(kp))
    assert image.shape == (256, 176, 3)
    for i, (x, y) in enumerate(FRONT):
        if i in (0, 14, 15, 16, 17):  # head joints overlap each other
            continue
        assert tuple(image[y, x]) == COLORS[i], (i, image[y, x])
    # middle of the right upper arm (limb 2: right shoulder -> right elbow) is colour 2 dimmed by 0.6
    mx, my = (68 + 62) // 2, (64 + 98) // 2
    assert tuple(image[my, mx]) == tuple(int(c * LIMB_DIMMING) for c in COLORS[2])
    assert tuple(image[5, 5]) == (0, 0, 0)


def test_missing_joints_are_not_drawn_and_scaling_renders_any_size():
    points = [list(p) for p in FRONT]
    points[4] = [-1, -1]  # right wrist missing
    kp = Keypoints.from_array(points, 176, 256)
    assert not kp.visible[4]
    image = np.asarray(render_pose(kp))
    assert tuple(image[130, 58]) == (0, 0, 0)
    small = np.asarray(render_pose(kp, 88, 128))
    assert small.shape == (128, 88, 3)
    assert tuple(small[int(64 / 256 * 128), int(68 / 176 * 88)]) == COLORS[2]


def test_confidence_threshold_and_normalised_input():
    arr = np.array([[x / 176, y / 256, 0.9] for x, y in FRONT])
    arr[7, 2] = 0.1
    kp = Keypoints.from_array(arr, 176, 256, normalized=True)
    assert kp.visible.sum() == 17 and not kp.visible[7]


@pytest.mark.parametrize("points, match", [
    (np.full((18, 2), np.nan), "NaN"),
    (np.array(FRONT[:17]), "shape"),
    (np.array(FRONT) * 3, "outside the 176x256 image"),
])
def test_bad_keypoints(points, match):
    with pytest.raises(PoseError, match=match):
        Keypoints.from_array(points, 176, 256)


def test_json_formats_roundtrip(tmp_path):
    kp = Keypoints.from_array(FRONT, 176, 256)
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps(kp.to_json()))
    again = keypoints_from_json(ours)
    np.testing.assert_allclose(again.xy, kp.xy)
    flat = [v for x, y in FRONT for v in (x, y, 0.8)]
    openpose = {"people": [{"pose_keypoints_2d": flat}], "canvas_width": 176, "canvas_height": 256}
    np.testing.assert_allclose(keypoints_from_json(openpose).xy, kp.xy)
    with pytest.raises(PoseError, match="image size"):
        keypoints_from_json({"people": [{"pose_keypoints_2d": flat}]})
    with pytest.raises(PoseError, match="no person"):
        keypoints_from_json({"people": []}, 176, 256)


def test_a_deeply_nested_pose_file_is_a_pose_error_not_a_recursion_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000)
    with pytest.raises(PoseError, match="not valid JSON .*nested too deeply"):
        keypoints_from_json(path)


def test_hands_are_drawn_in_rainbow_with_blue_joints():
    hand = np.array([[80 + 2 * (j % 5), 120 + 3 * (j // 5)] for j in range(21)], dtype=float)
    hands = np.stack([hand, np.full((21, 2), -1.0)])
    kp = Keypoints.from_array(FRONT, 176, 256, hands=hands)
    with_hands = np.asarray(render_pose(kp))
    without = np.asarray(render_pose(kp, draw_hands=False))
    assert (with_hands != without).any()
    assert tuple(with_hands[120, 80]) == (0, 0, 255)


@pytest.mark.parametrize("hands", [np.zeros((2, 21)), np.zeros((2, 20, 3)), np.zeros((1, 21, 3))])
def test_hands_of_the_wrong_shape(hands):
    with pytest.raises(PoseError, match=r"Hands must have shape \(2, 21, 2\|3\)"):
        Keypoints.from_array(FRONT, 176, 256, hands=hands)
