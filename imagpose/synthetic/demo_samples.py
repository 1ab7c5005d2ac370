"""write_demo_samples: the shipped demo inputs (imagpose/assets/samples), two looks in five poses."""

from __future__ import annotations

import os

from imagpose.io import OutputFolder

from .looks import Look, Scene
from .poses import Pose
from .rasterizer import draw_view

DEMO_SIZE = (256, 176)  # the paper's DeepFashion size, HxW
_DEMO_BUILD = dict(shoulders=0.11, hips=0.068, girth=1.1, height=0.86)
DEMO_LOOKS = {
    "red": Look(skin=(226, 184, 154), hair=(52, 36, 26), hair_style="short", hat=None, top=(196, 48, 52),
                top_second=(196, 48, 52), top_pattern="solid", stripes=3, long_sleeves=False, bottom="trousers",
                bottom_color=(38, 48, 92), legs=(226, 184, 154), shoes=(28, 28, 30), **_DEMO_BUILD),
    "blue": Look(skin=(200, 150, 120), hair=(150, 100, 55), hair_style="long", hat=None, top=(52, 122, 198),
                 top_second=(240, 240, 236), top_pattern="stripes", stripes=4, long_sleeves=True,
                 bottom="trousers", bottom_color=(205, 185, 135), legs=(200, 150, 120), shoes=(96, 62, 40),
                 **_DEMO_BUILD),
}
DEMO_POSES = {
    "front": Pose("standing", arms=((10, 0, 0, 8), (10, 0, 0, 8)), legs=((4, 0, 2), (4, 0, 2))),
    "arms_up": Pose("arms_raised", arms=((160, 0, 10, 10), (160, 0, 10, 10)), legs=((5, 0, 2), (5, 0, 2))),
    "walking": Pose("walking", yaw=20, arms=((8, -20, 0, 25), (8, 20, 0, 25)), legs=((2, 22, 6), (2, -20, 35))),
    "hands_on_hips": Pose("hands_on_hips", arms=((48, -12, -95, 0), (48, -12, -95, 0)),
                          legs=((8, 0, 2), (8, 0, 2))),
    "side": Pose("side", yaw=85, arms=((6, -10, 0, 20), (6, 10, 0, 20)), legs=((2, 10, 8), (2, -8, 20))),
}
DEMO_SCENE = Scene(kind="gradient", wall=(238, 238, 242), floor=(212, 212, 218), texture="none",
                   texture_color=(238, 238, 242), horizon=0.75, noise_seed=0, ground=0.96)


def write_demo_samples(out: str | os.PathLike) -> list[str]:
    """Write ``person_{look}_{pose}.png`` + keypoint ``.json`` for every demo look and pose, and ``index.json``,
    into ``out`` (256x176). Returns the sample names."""
    index = {}
    with OutputFolder(out) as folder:
        for look_name, look in DEMO_LOOKS.items():
            for pose_name, pose in DEMO_POSES.items():
                name = f"person_{look_name}_{pose_name}"
                view = draw_view(look, pose, DEMO_SCENE, DEMO_SIZE)
                folder.save_image(f"{name}.png", view.image, optimize=True)
                folder.write_json(f"{name}.json", view.keypoints.to_json())
                index[name] = {"outfit": look_name, "pose": pose_name}
        folder.write_json("index.json", index)
    return list(index)
