import numpy as np
import pytest
import torch
from PIL import Image

from imagpose import scenarios
from imagpose.canvas import CanvasError, GridLayout, PoseRequest, View, build_canvas
from imagpose.images import ImageInputError, load_image
from imagpose.pose import PoseError


def _solid(color, size=(64, 64), mode="RGB"):
    return Image.new(mode, size, color)


def _pose(size=(64, 64)):
    image = np.zeros((size[1], size[0], 3), np.uint8)
    image[10:20, 10:20] = (255, 0, 0)
    return Image.fromarray(image)


def test_layout_row_major_boxes_and_padding():
    layout = GridLayout(2, 3, 256, 176, pad_multiple=64)
    assert layout.padded_tile == (256, 192)
    assert layout.pad_top_left == (0, 8)
    assert layout.canvas_size == (512, 576)
    assert layout.latent_size == (64, 72)
    assert layout.tile_box(0) == (0, 0, 256, 192)
    assert layout.tile_box(1) == (0, 192, 256, 384)  # row-major: tile 1 is to the right of tile 0
    assert layout.tile_box(3) == (256, 0, 512, 192)
    assert layout.content_box(4) == (256, 200, 512, 376)
    assert GridLayout(2, 2, 512, 352).padded_tile == (512, 384)
    assert not GridLayout(2, 2, 128, 128).is_padded


def test_canvas_matches_official_layout_flag_and_black_targets():
    colors = [(200, 10, 10), (10, 200, 10), (10, 10, 200)]
    views = [View.source(_solid(c), _pose()) for c in colors] + [View.target(_pose())]
    canvas = build_canvas(PoseRequest(views), pad_multiple=64)
    person = (canvas.person * 255).round().byte()
    assert person.shape == (3, 128, 128)
    for i, color in enumerate(colors):
        top, left, _, _ = canvas.layout.tile_box(i)
        assert tuple(person[:, top + 5, left + 5].tolist()) == color
    assert person[:, 64:, 64:].sum() == 0  # the target tile is black
    assert canvas.flag.shape == (1, 16, 16)
    assert canvas.flag[0, :8, :8].eq(1).all() and canvas.flag[0, 8:, 8:].eq(0).all()
    assert canvas.flag.sum() == 3 * 64
    pose = (canvas.pose * 255).round().byte()
    assert tuple(pose[:, 64 + 15, 64 + 15].tolist()) == (255, 0, 0)  # target tiles keep their pose
    assert canvas.roles == ("source", "source", "source", "target")


def test_padding_replicates_person_edges_and_keeps_pose_black():
    image = np.zeros((256, 176, 3), np.uint8)
    image[:, 0] = (9, 9, 9)
    request = scenarios.t2(Image.fromarray(image), _pose((176, 256)), _pose((176, 256)))
    canvas = build_canvas(request, pad_multiple=64)
    assert canvas.layout.padded_tile == (256, 192)
    person = (canvas.person * 255).round().byte()
    assert person[:, 10, :8].eq(9).all()  # left pad replicates the first column
    pose = (canvas.pose * 255).round().byte()
    assert pose[:, :, :8].eq(0).all()


def test_scenarios_fill_the_grid_as_documented():
    s = ("img", "pose")
    assert [v.role for v in scenarios.t1(*s, "tp").views] == ["source", "target", "target", "target"]
    assert [v.role for v in scenarios.t2(*s, "tp").views] == ["source", "source", "source", "target"]
    t3 = scenarios.t3([("a", "pa"), ("b", "pb")], "tp")
    assert [v.image for v in t3.views[:3]] == ["a", "b", "a"] and t3.views[3].role == "target"
    star = scenarios.imagpose_star(*s, ["t1", "t2", "t3"])
    assert [v.role for v in star.views] == ["source", "target", "target", "target"]
    star6 = scenarios.imagpose_star(*s, ["t1", "t2"], grid=(2, 3))
    assert [v.role for v in star6.views] == ["source", "target", "target", "source", "source", "source"]
    with pytest.raises(ValueError, match="at most 3"):
        scenarios.imagpose_star(*s, ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="at most 3"):
        scenarios.t3([s] * 4, "tp")


@pytest.mark.parametrize("views, match", [
    (lambda: [View.source(_solid(1), _pose())] * 3, "exactly 4 views"),
    (lambda: [View.target(_pose())] * 4, "no source"),
    (lambda: [View.source(_solid(1), _pose())] * 4, "no target"),
    (lambda: [View.source(_solid(1, (64, 64)), _pose((64, 48)))] + [View.target(_pose())] * 3, "pose is 64x48"),
])
def test_bad_requests_are_refused_clearly(views, match):
    with pytest.raises(CanvasError, match=match):
        build_canvas(PoseRequest(views()))


def test_reference_must_be_a_source():
    views = [View.source(_solid(1), _pose())] + [View.target(_pose())] * 3
    with pytest.raises(CanvasError, match="not a source view"):
        build_canvas(PoseRequest(views, reference=2))


def test_unreadable_and_non_image_files(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    with pytest.raises(ImageInputError, match="not a readable image"):
        load_image(text, "source")
    with pytest.raises(ImageInputError, match="file not found"):
        load_image(tmp_path / "missing.png", "source")
    with pytest.raises(ImageInputError, match="16-bit or float"):
        load_image(Image.new("I;16", (8, 8)), "source")


def test_color_mode_rule_rgba_and_grayscale():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)  # person images: composited onto white
    from imagpose.images import POSE_BACKGROUND

    assert load_image(rgba, background=POSE_BACKGROUND).getpixel((0, 0)) == (0, 0, 0)
    half = Image.new("RGBA", (4, 4), (255, 0, 0, 128))
    assert load_image(half).getpixel((0, 0)) == (255, 127, 127)
    gray = load_image(Image.new("L", (4, 4), 77))
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (77, 77, 77)


def test_keypoint_errors_reach_the_canvas_builder(tmp_path):
    import json

    bad = tmp_path / "bad.json"
    points = [[10.0, 10.0, 1.0]] * 18
    points[4] = [float("nan"), 3.0, 1.0]
    bad.write_text(json.dumps({"format": "openpose18", "width": 64, "height": 64, "keypoints": points}))
    views = [View.source(_solid(1), _pose())] + [View.target(bad)] * 3
    with pytest.raises(PoseError, match="NaN"):
        build_canvas(PoseRequest(views))


def test_flag_and_person_are_exact_tensors():
    views = [View.source(_solid((255, 128, 0)), _pose())] + [View.target(_pose())] * 3
    canvas = build_canvas(PoseRequest(views))
    assert canvas.person.dtype == torch.float32
    assert torch.allclose(canvas.person[:, 0, 0], torch.tensor([1.0, 128 / 255, 0.0]))
    assert set(canvas.flag.unique().tolist()) == {0.0, 1.0}
