"""Regenerate the shipped sample inputs: synthetic person images with OpenPose-18 keypoints.

    python scripts/make_samples.py            # writes imagpose/assets/samples/{person_*.png, *.json}

Two outfits ("red", "blue") x five poses, 256x176 (the paper's DeepFashion size). People are drawn with
PIL from their keypoints, so the keypoints are exact. Deterministic: re-running gives the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parents[1] / "imagpose" / "assets" / "samples"
WIDTH, HEIGHT = 176, 256
M = (-1, -1)  # missing joint

# OpenPose-18 order: nose, neck, r_sho, r_elb, r_wri, l_sho, l_elb, l_wri, r_hip, r_knee, r_ank, l_hip, l_knee,
# l_ank, r_eye, l_eye, r_ear, l_ear. "right" is the person's right (image left when facing the camera).
POSES = {
    "front": [(88, 42), (88, 62), (68, 64), (62, 98), (58, 130), (108, 64), (114, 98), (118, 130), (77, 132),
              (76, 180), (75, 228), (99, 132), (100, 180), (101, 228), (84, 38), (92, 38), (79, 40), (97, 40)],
    "arms_up": [(88, 44), (88, 64), (68, 66), (58, 42), (54, 16), (108, 66), (118, 42), (122, 16), (77, 134),
                (76, 182), (75, 230), (99, 134), (100, 182), (101, 230), (84, 40), (92, 40), (79, 42), (97, 42)],
    "walking": [(88, 42), (88, 62), (68, 64), (64, 96), (66, 128), (108, 64), (112, 96), (110, 128), (77, 132),
                (70, 178), (62, 226), (99, 132), (106, 180), (116, 226), (84, 38), (92, 38), (79, 40), (97, 40)],
    "hands_on_hips": [(88, 42), (88, 62), (68, 64), (52, 96), (74, 128), (108, 64), (124, 96), (102, 128),
                      (77, 132), (76, 180), (75, 228), (99, 132), (100, 180), (101, 228), (84, 38), (92, 38),
                      (79, 40), (97, 40)],
    "side": [(102, 42), (88, 62), (84, 64), (90, 96), (98, 126), (92, 64), M, M, (84, 132), (86, 180), (84, 228),
             (92, 132), (98, 178), (102, 226), (98, 38), M, (86, 40), M],
}
OUTFITS = {
    "red": dict(shirt=(196, 58, 62), pants=(42, 52, 92), skin=(226, 184, 154), hair=(52, 36, 26),
                shoes=(30, 30, 30), stripes=None),
    "blue": dict(shirt=(62, 132, 198), pants=(178, 158, 112), skin=(200, 150, 120), hair=(160, 110, 60),
                 shoes=(90, 60, 40), stripes=(240, 240, 240)),
}


def _pt(points, i):
    p = points[i]
    return None if p == M else p


def _limb(draw, a, b, color, width):
    if a is None or b is None:
        return
    draw.line([a, b], fill=color, width=width)
    r = width // 2
    for x, y in (a, b):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=color)


def draw_person(points, outfit) -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT), (236, 236, 240))
    draw = ImageDraw.Draw(image)
    for y in range(HEIGHT):  # soft vertical backdrop gradient
        shade = int(236 - 18 * y / HEIGHT)
        draw.line([(0, y), (WIDTH, y)], fill=(shade, shade, shade + 4))
    feet_y = max(p[1] for p in points if p != M)
    draw.ellipse([40, feet_y - 6, 136, feet_y + 10], fill=(196, 196, 200))
    P = lambda i: _pt(points, i)  # noqa: E731
    # legs (thigh + shin) and shoes
    for hip, knee, ankle in ((8, 9, 10), (11, 12, 13)):
        _limb(draw, P(hip), P(knee), outfit["pants"], 20)
        _limb(draw, P(knee), P(ankle), outfit["pants"], 17)
        if P(ankle):
            x, y = P(ankle)
            draw.ellipse([x - 10, y - 4, x + 10, y + 8], fill=outfit["shoes"])
    # torso
    torso = [p for p in (P(2), P(5), P(11), P(8)) if p is not None]
    if len(torso) >= 3:
        draw.polygon(torso, fill=outfit["shirt"])
        if outfit["stripes"]:
            top = min(p[1] for p in torso)
            for y in range(top + 8, max(p[1] for p in torso), 12):
                xs = [p[0] for p in torso]
                draw.line([(min(xs) + 3, y), (max(xs) - 3, y)], fill=outfit["stripes"], width=3)
    _limb(draw, P(2), P(5), outfit["shirt"], 14)
    _limb(draw, P(8), P(11), outfit["pants"], 16)
    # arms: sleeve then forearm skin
    for shoulder, elbow, wrist in ((2, 3, 4), (5, 6, 7)):
        _limb(draw, P(shoulder), P(elbow), outfit["shirt"], 14)
        _limb(draw, P(elbow), P(wrist), outfit["skin"], 10)
        if P(wrist):
            x, y = P(wrist)
            draw.ellipse([x - 6, y - 6, x + 6, y + 6], fill=outfit["skin"])
    # neck and head
    _limb(draw, P(1), P(0), outfit["skin"], 12)
    if P(0):
        x, y = P(0)
        draw.ellipse([x - 14, y - 18, x + 14, y + 14], fill=outfit["skin"])
        draw.chord([x - 15, y - 20, x + 15, y + 8], 180, 360, fill=outfit["hair"])
        for eye in (P(14), P(15)):
            if eye:
                draw.ellipse([eye[0] - 2, eye[1] - 2, eye[0] + 2, eye[1] + 2], fill=(40, 30, 30))
    return image


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    index = {}
    for outfit_name, outfit in OUTFITS.items():
        for pose_name, points in POSES.items():
            name = f"person_{outfit_name}_{pose_name}"
            draw_person(points, outfit).save(OUT / f"{name}.png", optimize=True)
            keypoints = [[float(x), float(y), 1.0] if (x, y) != M else [-1.0, -1.0, 0.0] for x, y in points]
            data = {"format": "openpose18", "width": WIDTH, "height": HEIGHT, "keypoints": keypoints}
            (OUT / f"{name}.json").write_text(json.dumps(data) + "\n")
            index[name] = {"outfit": outfit_name, "pose": pose_name}
    (OUT / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    sizes = sum(p.stat().st_size for p in OUT.glob("*"))
    print(f"wrote {len(index)} samples ({sizes / 1024:.0f} KiB) to {OUT}")
    assert np.all([Image.open(OUT / f"{n}.png").size == (WIDTH, HEIGHT) for n in index])


if __name__ == "__main__":
    main()
