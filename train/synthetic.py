"""Procedural people with exact OpenPose-18 keypoints: the training data of the tiny model and the demo samples.

An identity is a look (skin tone; hair colour and style or a hat; a top that is solid, striped or two-tone, with
short or long sleeves; trousers, shorts or a skirt; shoes; build) and a scene (a plain or textured background,
sometimes a bench behind the person and an object in front of them). Each view draws the identity in a pose from
a varied prior: standing, walking, arms raised or out, hands on hips, three-quarter and side views, seated on the
bench, cut by the frame edge.

The figure is a 3-D stick model (figure units: standing height 1, y down, z toward the camera, origin at the
pelvis) seen by an orthographic camera. Its joints ARE the keypoints, so they are exact: a joint outside the
frame is missing, and so are the face points turned away from the camera (eyes, nose, ears by their facing).
Body parts are tapered capsules and convex polygons drawn back to front at ``_supersampling(size)`` times the
output size and box-filtered down (antialiasing); the coverage of the person's pixels not hidden by the object
in front, thresholded at 1/2, is the exact foreground mask.

Deterministic by seed: identity ``i`` of seed ``s`` draws from ``numpy.random.default_rng([s, i])``, so the
first N identities of a larger dataset are the same people. :func:`make_dataset` writes the layout of the
trainer's contract (``image/ dwpose/ keypoints/ mask/ background/ train.json test.json dataset.json``);
:func:`write_demo_samples` the shipped demo inputs.
"""

from __future__ import annotations

import colorsys
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from imagpose.errors import InvalidArgumentError
from imagpose.io import OutputFolder
from imagpose.pose import Keypoints, render_pose

GENERATOR_VERSION = 1
MIN_SIDE = 32  # pixels: smaller people are a few pixels wide and carry no look
Color = tuple[int, int, int]

# ----------------------------------------------------------------------------- the figure (figure units)
SPINE = 0.30  # pelvis -> base of the neck
NECK = 0.105  # base of the neck -> head centre
HEAD_RX, HEAD_RY = 0.056, 0.068
UPPER_ARM, FOREARM = 0.175, 0.155
THIGH, SHIN = 0.245, 0.245
ANKLE_HEIGHT, FOOT = 0.035, 0.085
TORSO_DEPTH = 0.055  # half the chest depth: the torso is a box seen from any yaw

# OpenPose-18 order (imagpose.pose.KEYPOINT_NAMES); "right" is the person's right, image left when facing us
JOINTS = ("nose", "neck", "r_sho", "r_elb", "r_wri", "l_sho", "l_elb", "l_wri", "r_hip", "r_knee", "r_ank",
          "l_hip", "l_knee", "l_ank", "r_eye", "l_eye", "r_ear", "l_ear")
# face points: offset from the head centre and the direction they face (head frame), the cosine of the angle to
# the camera they must exceed to be seen
FACE = {
    "nose": ((0.0, 0.014, 0.060), (0.0, 0.0, 1.0), -0.25),
    "r_eye": ((-0.021, -0.006, 0.050), (-0.4, 0.0, 0.92), 0.2),
    "l_eye": ((0.021, -0.006, 0.050), (0.4, 0.0, 0.92), 0.2),
    "r_ear": ((-0.055, 0.004, -0.004), (-1.0, 0.0, 0.0), -0.35),
    "l_ear": ((0.055, 0.004, -0.004), (1.0, 0.0, 0.0), -0.35),
}

POSE_FAMILIES = ("standing", "walking", "arms_raised", "arms_out", "hands_on_hips", "three_quarter", "side",
                 "seated")
_FAMILY_WEIGHTS = (0.17, 0.2, 0.12, 0.07, 0.08, 0.12, 0.14, 0.1)
EDGE_CUT_PROBABILITY = 0.08

_SKIN = ((255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 140, 100), (160, 105, 70), (120, 78, 52),
         (88, 58, 40))
_HAIR = ((30, 24, 20), (60, 40, 28), (100, 66, 38), (150, 105, 60), (205, 170, 105), (170, 70, 35),
         (185, 185, 185), (90, 60, 150), (40, 110, 190))
_HAIR_WEIGHTS = (0.22, 0.2, 0.15, 0.12, 0.12, 0.07, 0.06, 0.03, 0.03)
_NEUTRALS = ((28, 28, 30), (240, 240, 236), (128, 128, 132), (34, 44, 82), (205, 190, 150), (96, 70, 50))


@dataclass(frozen=True)
class Look:
    """What makes an identity recognisable. Colours are RGB; sizes are figure units (standing height 1)."""

    skin: Color
    hair: Color
    hair_style: str  # short | long | bun | buzz | hat
    hat: Color | None
    top: Color
    top_second: Color  # the stripes, or the lower half of a two-tone top
    top_pattern: str  # solid | stripes | two_tone
    stripes: int
    long_sleeves: bool
    bottom: str  # trousers | shorts | skirt
    bottom_color: Color
    legs: Color  # what shows below shorts or a skirt: skin or tights
    shoes: Color
    shoulders: float  # half the shoulder width
    hips: float  # half the hip-joint distance
    girth: float  # limb thickness factor
    height: float  # standing height as a fraction of the image height


@dataclass(frozen=True)
class Scene:
    """An identity's surroundings: background, an optional bench behind the person and object in front.

    Positions are fractions of the image width (x) and height (y), so a scene renders at any size.
    """

    kind: str  # plain | gradient | wall_floor | noise
    wall: Color
    floor: Color
    texture: str  # none | stripes | checks | planks (wall_floor only)
    texture_color: Color
    horizon: float  # wall/floor border (wall_floor)
    noise_seed: int
    ground: float  # where standing feet touch
    seat: tuple[float, float, float, Color] | None = None  # (x centre, width, top, colour)
    front_object: tuple[str, float, float, float, Color, Color] | None = None  # (kind, x centre, w, h, colours)


@dataclass(frozen=True)
class Pose:
    """A pose of the figure and where it stands in the frame.

    Angles in degrees. ``yaw`` turns the body about the vertical (0 = facing the camera, +90 = facing the image's
    right); ``lean`` tilts the trunk forward, ``bend`` sideways. Per side (right, left): an arm is (abduction from
    hanging, forward flexion, elbow abduction change, elbow bend); a leg is (abduction, forward flexion, knee bend).
    """

    family: str
    yaw: float = 0.0
    head_yaw: float = 0.0
    lean: float = 0.0
    bend: float = 0.0
    arms: tuple[tuple[float, float, float, float], tuple[float, float, float, float]] = (
        (8.0, 0.0, 0.0, 10.0), (8.0, 0.0, 0.0, 10.0))
    legs: tuple[tuple[float, float, float], tuple[float, float, float]] = ((3.0, 0.0, 2.0), (3.0, 0.0, 2.0))
    x: float = 0.5  # horizontal centre, fraction of the width
    scale: float = 1.0  # times the look's height
    edge_cut: str | None = None  # left | right | bottom: the frame cuts the person
    edge_amount: float = 0.0


@dataclass
class RenderedView:
    image: Image.Image  # RGB
    mask: Image.Image  # L, 255 = person
    keypoints: Keypoints
    background: Image.Image  # RGB, the scene without the person (the object in front included)


# ----------------------------------------------------------------------------- sampling looks, scenes, poses
def _hsv(h: float, s: float, v: float) -> Color:
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def _distance(a: Color, b: Color) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=np.float64)))


def _garment_color(rng: np.random.Generator, avoid: tuple[Color, ...] = (), min_distance: float = 90.0) -> Color:
    """A clothing colour: a saturated hue, or a neutral (black, white, grey, navy, beige, brown), far from ``avoid``."""
    for _ in range(20):
        if rng.random() < 0.25:
            color = _NEUTRALS[rng.integers(len(_NEUTRALS))]
        else:
            color = _hsv(rng.random(), rng.uniform(0.45, 0.95), rng.uniform(0.35, 0.95))
        if all(_distance(color, other) >= min_distance for other in avoid):
            return color
    return color


def _pick(rng: np.random.Generator, options, weights=None):
    return options[rng.choice(len(options), p=weights)]


def sample_look(rng: np.random.Generator) -> Look:
    skin = _pick(rng, _SKIN)
    hair_style = _pick(rng, ("short", "long", "bun", "buzz", "hat"), (0.35, 0.3, 0.1, 0.1, 0.15))
    top = _garment_color(rng, (skin,), 70.0)
    top_pattern = _pick(rng, ("solid", "stripes", "two_tone"), (0.45, 0.3, 0.25))
    bottom = _pick(rng, ("trousers", "shorts", "skirt"), (0.55, 0.15, 0.3))
    bottom_color = _garment_color(rng, (top,), 100.0)
    legs = skin if rng.random() < 0.7 or bottom == "trousers" else _garment_color(rng, (bottom_color,))
    return Look(
        skin=skin,
        hair=_pick(rng, _HAIR, _HAIR_WEIGHTS),
        hair_style=hair_style,
        hat=_garment_color(rng, (top, skin)) if hair_style == "hat" else None,
        top=top,
        top_second=_garment_color(rng, (top,), 110.0),
        top_pattern=top_pattern,
        stripes=int(rng.integers(3, 6)),
        long_sleeves=bool(rng.random() < 0.5),
        bottom=bottom,
        bottom_color=bottom_color,
        legs=legs,
        shoes=_garment_color(rng, (legs,), 60.0) if rng.random() < 0.4 else _pick(rng, _NEUTRALS[:3]),
        shoulders=float(rng.uniform(0.095, 0.125)),
        hips=float(rng.uniform(0.055, 0.08)),
        girth=float(rng.uniform(0.9, 1.3)),
        height=float(rng.uniform(0.8, 0.9)),
    )


def sample_scene(rng: np.random.Generator, look: Look) -> Scene:
    """A background that the look stands out from: mostly light and greyish, sometimes dark or coloured."""
    clothes = (look.top, look.bottom_color, look.skin)
    for _ in range(20):
        dark = rng.random() < 0.15
        value = rng.uniform(0.2, 0.45) if dark else rng.uniform(0.6, 0.95)
        hue, saturation = rng.random(), rng.uniform(0.0, 0.3)
        wall = _hsv(hue, saturation, value)
        if all(_distance(wall, c) >= 80 for c in clothes):
            break
    floor = _hsv(hue + rng.uniform(-0.1, 0.1), rng.uniform(0.05, 0.35), value * rng.uniform(0.6, 0.9))
    kind = _pick(rng, ("plain", "gradient", "wall_floor", "noise"), (0.25, 0.25, 0.35, 0.15))
    texture = _pick(rng, ("none", "stripes", "checks", "planks"), (0.3, 0.3, 0.2, 0.2))
    shift = rng.uniform(0.08, 0.18) * (1 if value < 0.5 else -1)
    texture_color = _hsv(hue, saturation, min(max(value + shift, 0.0), 1.0))
    ground = float(rng.uniform(0.95, 0.98))
    seat = front_object = None
    if rng.random() < 0.35:
        top = ground - (SHIN + ANKLE_HEIGHT) * look.height  # a seated person's feet reach the ground
        seat = (float(rng.uniform(0.4, 0.6)), float(rng.uniform(0.55, 0.8)), top, _garment_color(rng, clothes, 70.0))
    if rng.random() < 0.2:
        kind_of_object = _pick(rng, ("crate", "plant", "low_wall"))
        main = _garment_color(rng, clothes, 80.0) if kind_of_object != "plant" else (150, 90, 60)
        second = (50, 130, 60) if kind_of_object == "plant" else tuple(int(c * 0.7) for c in main)
        width = rng.uniform(0.25, 0.4) if kind_of_object != "low_wall" else rng.uniform(0.5, 0.8)
        front_object = (kind_of_object, float(rng.uniform(0.2, 0.8)), float(width), float(rng.uniform(0.18, 0.3)),
                        main, second)
    return Scene(kind=kind, wall=wall, floor=floor, texture=texture, texture_color=texture_color,
                 horizon=float(rng.uniform(0.6, 0.8)), noise_seed=int(rng.integers(2**31)),
                 ground=ground, seat=seat, front_object=front_object)


def _relaxed_arm(rng) -> tuple[float, float, float, float]:
    return (rng.uniform(3, 22), rng.uniform(-15, 20), rng.uniform(-5, 10), rng.uniform(0, 35))


def _straight_leg(rng) -> tuple[float, float, float]:
    return (rng.uniform(0, 8), rng.uniform(-5, 8), rng.uniform(0, 10))


def _gesture(rng) -> tuple[float, float, float, float]:
    """An arm doing something: waving, hand to the face, pointing, holding the elbow out."""
    kind = rng.integers(4)
    if kind == 0:
        return (rng.uniform(100, 150), rng.uniform(-10, 20), rng.uniform(20, 50), rng.uniform(0, 30))
    if kind == 1:
        return (rng.uniform(10, 35), rng.uniform(10, 40), rng.uniform(-20, 0), rng.uniform(110, 140))
    if kind == 2:
        return (rng.uniform(60, 95), rng.uniform(10, 70), rng.uniform(-10, 10), rng.uniform(0, 15))
    return (rng.uniform(40, 60), rng.uniform(-15, 0), rng.uniform(-100, -80), rng.uniform(0, 10))


def sample_pose(rng: np.random.Generator, family: str | None = None, can_sit: bool = True) -> Pose:
    """A pose from the prior; ``family`` fixes its kind (one of :data:`POSE_FAMILIES`)."""
    if family is None:
        weights = np.array(_FAMILY_WEIGHTS) * [can_sit or f != "seated" for f in POSE_FAMILIES]
        family = POSE_FAMILIES[rng.choice(len(POSE_FAMILIES), p=weights / weights.sum())]
    side = 1.0 if rng.random() < 0.5 else -1.0
    arms = [_relaxed_arm(rng), _relaxed_arm(rng)]
    legs = [_straight_leg(rng), _straight_leg(rng)]
    yaw, lean = rng.normal(0, 10), rng.uniform(-3, 5)
    if family == "standing":
        if rng.random() < 0.35:
            arms[rng.integers(2)] = _gesture(rng)
        if rng.random() < 0.3:  # weight on one leg
            legs[rng.integers(2)] = (rng.uniform(5, 12), rng.uniform(5, 15), rng.uniform(10, 25))
    elif family in ("walking", "side", "three_quarter"):
        yaw = {"walking": _pick(rng, (0.0, 35.0, 85.0)), "side": rng.uniform(75, 100),
               "three_quarter": rng.uniform(30, 60)}[family] * side + rng.normal(0, 6)
        if family == "walking" or rng.random() < 0.3:
            phase, stride = rng.uniform(0.5, 1.0) * rng.choice((-1, 1)), rng.uniform(15, 32)
            for i, sign in enumerate((1.0, -1.0)):
                flexion = stride * phase * sign
                legs[i] = (rng.uniform(0, 4), flexion, rng.uniform(25, 45) if flexion < 0 else rng.uniform(3, 12))
                arms[i] = (rng.uniform(4, 12), -0.9 * flexion, rng.uniform(-5, 5), rng.uniform(10, 35))
        elif rng.random() < 0.4:
            arms[rng.integers(2)] = _gesture(rng)
    elif family == "arms_raised":
        for i in range(2) if rng.random() < 0.6 else (rng.integers(2),):
            arms[i] = (rng.uniform(120, 175), rng.uniform(-10, 20), rng.uniform(-15, 25), rng.uniform(0, 45))
        yaw = rng.normal(0, 15)
    elif family == "arms_out":
        for i in range(2):
            arms[i] = (rng.uniform(70, 105), rng.uniform(-10, 30), rng.uniform(-10, 20), rng.uniform(0, 40))
        legs = [(rng.uniform(5, 14), rng.uniform(-5, 5), rng.uniform(0, 8)) for _ in range(2)]
    elif family == "hands_on_hips":
        for i in range(2) if rng.random() < 0.75 else (rng.integers(2),):
            arms[i] = (rng.uniform(40, 55), rng.uniform(-20, -5), rng.uniform(-105, -85), rng.uniform(0, 10))
        legs = [(rng.uniform(4, 12), rng.uniform(-3, 3), rng.uniform(0, 5)) for _ in range(2)]
    elif family == "seated":
        yaw = rng.uniform(0, 35) * side if rng.random() < 0.6 else rng.uniform(70, 90) * side
        lean = rng.uniform(0, 12)
        for i in range(2):
            flexion = rng.uniform(70, 95)
            legs[i] = (rng.uniform(3, 12), flexion, flexion - rng.uniform(-10, 20))
            arms[i] = (rng.uniform(5, 20), rng.uniform(10, 35), rng.uniform(-10, 0), rng.uniform(40, 70))
    else:
        raise InvalidArgumentError(f"Unknown pose family {family!r}; choose one of {', '.join(POSE_FAMILIES)}.")
    edge_cut, amount = None, 0.0
    if family != "seated" and rng.random() < EDGE_CUT_PROBABILITY:
        edge_cut = _pick(rng, ("left", "right", "bottom"))
        amount = float(rng.uniform(0.2, 0.45) if edge_cut != "bottom" else rng.uniform(1.2, 1.5))
    return Pose(family=family, yaw=float(yaw), head_yaw=float(rng.normal(0, 12)), lean=float(lean),
                bend=float(rng.normal(0, 3)), arms=tuple(tuple(float(v) for v in a) for a in arms),
                legs=tuple(tuple(float(v) for v in leg) for leg in legs), x=float(rng.uniform(0.38, 0.62)),
                scale=float(rng.uniform(0.95, 1.04)), edge_cut=edge_cut, edge_amount=amount)


# ----------------------------------------------------------------------------- the 3-D figure
def _direction(abduction: float, flexion: float, side: float) -> np.ndarray:
    """Unit vector of a limb hanging down (0, 0), swung out by ``abduction`` and forward by ``flexion`` degrees."""
    a, f = math.radians(abduction), math.radians(flexion)
    return np.array([side * math.sin(a), math.cos(a) * math.cos(f), math.cos(a) * math.sin(f)])


def _yaw_matrix(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])  # facing +z turns toward +x for degrees > 0


def _figure(look: Look, pose: Pose) -> dict[str, np.ndarray]:
    """Every point of the figure, camera frame (yaw applied), figure units, pelvis at the origin."""
    lean, bend = math.radians(pose.lean), math.radians(pose.bend)
    up = np.array([math.sin(bend), -math.cos(bend) * math.cos(lean), math.cos(bend) * math.sin(lean)])
    neck_base = SPINE * up
    p = {"pelvis": np.zeros(3), "neck_base": neck_base}
    for name, side in (("r", -1.0), ("l", 1.0)):
        p[f"{name}_sho"] = neck_base + np.array([side * look.shoulders, 0.02, 0.0])
        p[f"{name}_hip"] = np.array([side * look.hips, 0.0, 0.0])
        arm = pose.arms[0 if name == "r" else 1]
        upper = _direction(arm[0], arm[1], side)
        p[f"{name}_elb"] = p[f"{name}_sho"] + UPPER_ARM * upper
        p[f"{name}_wri"] = p[f"{name}_elb"] + FOREARM * _direction(arm[0] + arm[2], arm[1] + arm[3], side)
        p[f"{name}_hand"] = p[f"{name}_wri"] + 0.045 * _direction(arm[0] + arm[2], arm[1] + arm[3], side)
        leg = pose.legs[0 if name == "r" else 1]
        p[f"{name}_knee"] = p[f"{name}_hip"] + THIGH * _direction(leg[0], leg[1], side)
        p[f"{name}_ank"] = p[f"{name}_knee"] + SHIN * _direction(leg[0] * 0.5, leg[1] - leg[2], side)
        p[f"{name}_toe"] = p[f"{name}_ank"] + FOOT * np.array([side * 0.25, 0.35, 0.9]) / 1.0
    p["neck"] = (p["r_sho"] + p["l_sho"]) / 2  # OpenPose's neck: the shoulders' midpoint (as DWPose computes it)
    head = neck_base + NECK * up
    p["head"] = head
    head_turn = _yaw_matrix(pose.head_yaw)
    for name, (offset, _, _) in FACE.items():
        p[name] = head + head_turn @ np.array(offset)
    for corner, (dx, dz) in {"a": (1, 1), "b": (1, -1), "c": (-1, -1), "d": (-1, 1)}.items():
        p[f"chest_{corner}"] = neck_base + np.array([dx * (look.shoulders + 0.02), 0.015, dz * TORSO_DEPTH])
        p[f"waist_{corner}"] = 0.55 * neck_base + np.array([dx * (look.hips + 0.03), 0.0, dz * TORSO_DEPTH])
        p[f"hipline_{corner}"] = np.array([dx * (look.hips + 0.045), 0.015, dz * TORSO_DEPTH])
        p[f"crotch_{corner}"] = np.array([dx * (look.hips + 0.04), 0.08, dz * TORSO_DEPTH])
    turn = _yaw_matrix(pose.yaw)
    return {name: turn @ point for name, point in p.items()}


def _face_visible(pose: Pose) -> dict[str, bool]:
    turn = _yaw_matrix(pose.yaw) @ _yaw_matrix(pose.head_yaw)
    return {name: (turn @ np.array(normal))[2] > threshold for name, (_, normal, threshold) in FACE.items()}


# ----------------------------------------------------------------------------- drawing
def _supersampling(size: tuple[int, int]) -> int:
    return 4 if min(size) <= 96 else 3 if min(size) <= 192 else 2


class _Layer:
    """An RGBA layer drawn at ``k`` times the output size; opaque fills, so alpha is the exact coverage."""

    def __init__(self, size: tuple[int, int], k: int):
        self.height, self.width, self.k = size[0], size[1], k
        self.image = Image.new("RGBA", (size[1] * k, size[0] * k), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.image)

    def _xy(self, point) -> tuple[float, float]:
        return point[0] * self.k - 0.5, point[1] * self.k - 0.5  # pixel centres at +0.5

    def polygon(self, points, color: Color) -> None:
        self.draw.polygon([self._xy(p) for p in points], fill=color + (255,))

    def disc(self, center, radius: float, color: Color, ry: float | None = None) -> None:
        x, y = self._xy(center)
        rx, ry = radius * self.k, (radius if ry is None else ry) * self.k
        self.draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=color + (255,))

    def capsule(self, a, b, ra: float, rb: float, color: Color) -> None:
        """A limb: round ends of radii ``ra`` at ``a`` and ``rb`` at ``b``, joined by their tangent quad."""
        a, b = np.asarray(a[:2], dtype=np.float64), np.asarray(b[:2], dtype=np.float64)
        along = b - a
        length = float(np.hypot(*along))
        if length > 1e-6:
            normal = np.array([-along[1], along[0]]) / length
            self.polygon([a + ra * normal, b + rb * normal, b - rb * normal, a - ra * normal], color)
        self.disc(a, ra, color)
        self.disc(b, rb, color)

    def patterned_polygon(self, points, colors: tuple[Color, Color], pattern: str, stripes: int, top, bottom) -> None:
        """A convex polygon filled by ``pattern`` in the frame of the trunk: ``v`` runs 0 -> 1 from ``top`` to
        ``bottom`` (shoulder and hip midpoints), so stripes follow a leaning or seated body."""
        if pattern == "solid":
            self.polygon(points, colors[0])
            return
        mask = Image.new("L", self.image.size, 0)
        ImageDraw.Draw(mask).polygon([self._xy(p) for p in points], fill=255)
        left, upper, right, lower = mask.getbbox() or (0, 0, 1, 1)
        ys, xs = np.mgrid[upper:lower, left:right].astype(np.float64)
        top, bottom = np.array(self._xy(top)), np.array(self._xy(bottom))
        axis = bottom - top
        v = ((xs - top[0]) * axis[0] + (ys - top[1]) * axis[1]) / max(float(axis @ axis), 1e-6)
        second = (np.floor(v * (2 * stripes - 1)) % 2 == 1) if pattern == "stripes" else v > 0.5
        fill = np.where(second[..., None], colors[1], colors[0]).astype(np.uint8)
        rgba = np.concatenate([fill, np.full(fill.shape[:2] + (1,), 255, np.uint8)], axis=-1)
        self.image.paste(Image.fromarray(rgba), (left, upper), mask.crop((left, upper, right, lower)))

    def coverage(self) -> tuple[np.ndarray, np.ndarray]:
        """(premultiplied RGB (H, W, 3) in [0, 255], alpha (H, W) in [0, 1]) at the output size: the mean of each
        k x k block of the premultiplied layer (PIL's ``reduce``, a box filter in C) is the exact area coverage."""
        reduced = np.asarray(self.image.convert("RGBa").reduce(self.k), dtype=np.float32)
        return reduced[..., :3], reduced[..., 3] / 255.0


def _hull(points) -> list[np.ndarray]:
    pts = np.asarray([p[:2] for p in points], dtype=np.float32)
    return list(cv2.convexHull(pts)[:, 0, :].astype(np.float64))


def _shade(color: Color, factor: float) -> Color:
    return tuple(int(min(max(c * factor, 0), 255)) for c in color)


def _body_parts(look: Look, pose: Pose, p: dict[str, np.ndarray], px, unit: float) -> list:
    """(depth, draw function) for every part; ``px`` maps figure points to pixels, ``unit`` = pixels per unit."""
    g = look.girth * unit
    parts = []

    def add(depth, fn, *args):
        parts.append((depth, len(parts), fn, args))

    def depth(*names):
        return sum(float(p[n][2]) for n in names) / len(names)

    sleeve_end = 1.0 if look.long_sleeves else 0.45
    for s in ("r", "l"):
        sho, elb, wri, hand = px(p[f"{s}_sho"]), px(p[f"{s}_elb"]), px(p[f"{s}_wri"]), px(p[f"{s}_hand"])
        bias = 0.004  # an arm beside the trunk is drawn over it
        cuff = sho + (elb - sho) * sleeve_end
        add(depth(f"{s}_elb", f"{s}_wri") + bias, "capsule", elb, wri, 0.027 * g, 0.022 * g,
            look.top if look.long_sleeves else look.skin)
        add(depth(f"{s}_sho", f"{s}_elb") + bias, "capsule", sho, elb, 0.031 * g, 0.027 * g, look.skin)
        add(depth(f"{s}_sho", f"{s}_elb") + bias, "capsule", sho, cuff, 0.036 * g, 0.031 * g, look.top)
        add(depth(f"{s}_wri") + bias, "capsule", wri, hand, 0.022 * g, 0.02 * g, look.skin)

        hip, knee, ank, toe = px(p[f"{s}_hip"]), px(p[f"{s}_knee"]), px(p[f"{s}_ank"]), px(p[f"{s}_toe"])
        # a thigh starts under the trunk, unless it comes toward the camera (seated, seen from the front)
        leg_depth = depth(f"{s}_hip", f"{s}_knee")
        if p[f"{s}_knee"][2] - p[f"{s}_hip"][2] < 0.08:
            leg_depth = min(leg_depth, 0.0)
        leg_depth -= 0.004
        trousers = look.bottom == "trousers"
        add(leg_depth, "capsule", hip, knee, 0.05 * g, 0.038 * g, look.bottom_color if trousers else look.legs)
        if look.bottom == "shorts":
            add(leg_depth, "capsule", hip, hip + (knee - hip) * 0.45, 0.056 * g, 0.05 * g, look.bottom_color)
        add(depth(f"{s}_knee", f"{s}_ank") - 0.004, "capsule", knee, ank, 0.037 * g, 0.027 * g,
            look.bottom_color if trousers else look.legs)
        add(depth(f"{s}_ank", f"{s}_toe") - 0.003, "capsule", ank, toe, 0.03 * g, 0.026 * g, look.shoes)

    corners = "abcd"
    add(-0.002, "polygon", _hull([px(p[f"{n}_{c}"]) for n in ("hipline", "crotch") for c in corners]),
        look.bottom_color)
    trunk = _hull([px(p[f"{n}_{c}"]) for n in ("chest", "waist", "hipline") for c in corners])
    top_mid, bottom_mid = px(p["neck"]), px(p["pelvis"])
    add(0.0, "patterned_polygon", trunk, (look.top, look.top_second), look.top_pattern, look.stripes, top_mid,
        bottom_mid)
    if look.bottom == "skirt":
        knees = [px(p["pelvis"] + (p[f"{s}_knee"] - p["pelvis"]) * 0.85) for s in "rl"]
        flare = 0.075 * unit
        hem = [k + np.array([dx, 0.0]) for k in knees for dx in (-flare, flare)]
        leg_depths = [depth(f"{s}_hip", f"{s}_knee") for s in "rl"]
        add(max(leg_depths) + 0.001, "polygon", _hull([px(p[f"hipline_{c}"]) for c in corners] + hem),
            look.bottom_color)
    add(0.5, "capsule", px(p["neck_base"]), px(p["head"]), 0.026 * g, 0.024 * g, look.skin)
    return parts


def _draw_head(layer: _Layer, look: Look, pose: Pose, p, px, unit: float, visible: dict[str, bool]) -> None:
    head = px(p["head"])
    facing = (_yaw_matrix(pose.yaw) @ _yaw_matrix(pose.head_yaw) @ np.array([0.0, 0.0, 1.0]))
    rx, ry = HEAD_RX * unit, HEAD_RY * unit
    face = head + np.array([facing[0] * 0.16 * rx, 0.12 * ry])
    if look.hair_style == "long":
        layer.capsule(head, head + np.array([-facing[0] * 0.35 * rx, 1.35 * ry]), 1.08 * rx, 0.95 * rx, look.hair)
    if look.hair_style in ("short", "long", "bun", "buzz"):
        grow = 1.04 if look.hair_style == "buzz" else 1.1
        layer.disc(head + np.array([-facing[0] * 0.08 * rx, -0.06 * ry]), grow * rx, look.hair, grow * ry)
    else:
        layer.disc(head, rx, look.hair)
    if look.hair_style == "bun":
        layer.disc(head + np.array([-facing[0] * 0.7 * rx, -0.75 * ry]), 0.5 * rx, look.hair)
    cover = 0.72 if look.hair_style == "buzz" else 0.85 if look.hair_style != "hat" else 0.95
    layer.disc(face, cover * rx, look.skin, cover * ry)
    if look.hair_style == "hat":
        layer.disc(head + np.array([0.0, -0.6 * ry]), 1.05 * rx, look.hat, 0.58 * ry)
        brim = head + np.array([facing[0] * 0.45 * rx, -0.3 * ry])
        half = np.array([rx * (1.05 - abs(facing[0]) * 0.2), 0.0])
        layer.capsule(brim - half, brim + half, 0.13 * ry, 0.13 * ry, _shade(look.hat, 0.8))
    eye_color = (35, 28, 28)
    for eye in ("r_eye", "l_eye"):
        if visible[eye]:
            layer.disc(px(p[eye]), max(0.009 * unit, 0.35), eye_color)


def _draw_figure(layer: _Layer, look: Look, pose: Pose, p, px, unit: float, visible) -> None:
    for _, _, method, args in sorted(_body_parts(look, pose, p, px, unit), key=lambda part: part[:2]):
        getattr(layer, method)(*args)
    _draw_head(layer, look, pose, p, px, unit, visible)


def _place(look: Look, pose: Pose, scene: Scene, p, size: tuple[int, int]):
    """(pixels per figure unit, pelvis position in pixels) for the pose in the frame."""
    height, width = size
    unit = look.height * height * pose.scale
    xs = np.array([q[0] for q in p.values()])
    ys = np.array([q[1] for q in p.values()])
    top = float(ys.min()) - HEAD_RY
    bottom = max(float(p["r_toe"][1]), float(p["l_toe"][1]), float(p["r_ank"][1]), float(p["l_ank"][1])) + 0.03
    left, right = float(xs.min()) - 0.06, float(xs.max()) + 0.06
    if pose.family == "seated" and scene.seat is not None:
        unit = look.height * height  # the scale the seat was made for
        return unit, np.array([scene.seat[0] * width + (pose.x - 0.5) * 0.2 * width,
                               scene.seat[2] * height - 0.035 * unit])
    # fit the whole figure in the frame (raised arms and wide stances make it larger than standing)
    unit = min(unit, 0.97 * height / (bottom - top), 0.96 * width / (right - left))
    if pose.edge_cut == "bottom":
        unit *= pose.edge_amount
        return unit, np.array([pose.x * width, 0.03 * height - top * unit])
    y = scene.ground * height - bottom * unit
    y = max(y, 0.015 * height - top * unit)
    x_min, x_max = -left * unit + 0.01 * width, width * 0.99 - right * unit
    x = min(max(pose.x * width, x_min), max(x_min, x_max))
    if pose.edge_cut == "left":
        x = -left * unit - pose.edge_amount * (right - left) * unit
    elif pose.edge_cut == "right":
        x = width - right * unit + pose.edge_amount * (right - left) * unit
    return unit, np.array([x, y])


def _render_scene(scene: Scene, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """(background RGB (H, W, 3) float, the object in front as (premultiplied RGB, alpha) or None)."""
    height, width = size
    ys = (np.arange(height, dtype=np.float32) + 0.5)[:, None] / height
    xs = (np.arange(width, dtype=np.float32) + 0.5)[None, :] / width
    wall, floor = np.array(scene.wall, np.float32), np.array(scene.floor, np.float32)
    if scene.kind == "plain":
        bg = np.broadcast_to(wall, (height, width, 3)).copy()
    elif scene.kind == "gradient":
        t = (ys * np.ones_like(xs))[..., None]
        bg = wall * (1 - t) + floor * t
    elif scene.kind == "noise":
        rng = np.random.default_rng(scene.noise_seed)
        coarse = rng.uniform(-1, 1, (6, 5)).astype(np.float32)
        smooth = np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.BICUBIC))
        bg = wall + (floor - wall) * (0.5 + 0.5 * np.clip(smooth, -1, 1))[..., None]
    else:
        is_floor = (ys > scene.horizon) * np.ones_like(xs, dtype=bool)
        texture = np.zeros((height, width), bool)
        cell = 0.125  # of the height: coarse enough to survive 64 pixels
        u, v = xs * width / height, ys * np.ones_like(xs)
        if scene.texture == "stripes":
            texture = (np.floor(u / cell * 1.5) % 2 == 1) & ~is_floor
        elif scene.texture == "checks":
            texture = ((np.floor(u / cell) + np.floor(v / cell)) % 2 == 1) & ~is_floor
        elif scene.texture == "planks":
            texture = (np.abs(((v - scene.horizon) / 0.06) % 1 - 0.5) > 0.42) & is_floor
        bg = np.where(is_floor[..., None], floor, wall)
        bg = np.where(texture[..., None], np.array(scene.texture_color, np.float32), bg)
    k = _supersampling(size)
    if scene.seat is not None:
        layer = _Layer(size, k)
        x, w, top, color = scene.seat
        top *= height
        left, right, bottom = x * width - w * width / 2, x * width + w * width / 2, top + 0.04 * height
        layer.polygon([(left, top), (right, top), (right, bottom), (left, bottom)], color)
        for leg in (-0.42, 0.42):
            cx = x * width + leg * w * width
            layer.polygon([(cx - 0.015 * width, top), (cx + 0.015 * width, top), (cx + 0.015 * width, scene.ground *
                          height), (cx - 0.015 * width, scene.ground * height)], _shade(color, 0.75))
        premultiplied, alpha = layer.coverage()
        bg = premultiplied + (1 - alpha[..., None]) * bg
    front = None
    if scene.front_object is not None:
        front = _render_front_object(scene, size, k)
        bg = front[0] + (1 - front[1][..., None]) * bg
    return bg, front


def _render_front_object(scene: Scene, size: tuple[int, int], k: int) -> tuple[np.ndarray, np.ndarray]:
    height, width = size
    kind, x, w, h, main, second = scene.front_object
    layer = _Layer(size, k)
    left, right = (x - w / 2) * width, (x + w / 2) * width
    bottom, top = height * 1.0, height * (1.0 - h)
    if kind == "plant":
        pot_top = bottom - 0.45 * (bottom - top)
        layer.polygon([(left + 0.2 * w * width, pot_top), (right - 0.2 * w * width, pot_top),
                       (right - 0.3 * w * width, bottom), (left + 0.3 * w * width, bottom)], main)
        layer.disc(((left + right) / 2, pot_top - 0.25 * (bottom - top)), 0.42 * w * width, second,
                   0.38 * (bottom - top))
    else:
        layer.polygon([(left, top), (right, top), (right, bottom), (left, bottom)], main)
        slats = 3 if kind == "crate" else 2
        for i in range(1, slats):
            y = top + i * (bottom - top) / slats
            layer.polygon([(left, y - 0.012 * height), (right, y - 0.012 * height), (right, y + 0.012 * height),
                           (left, y + 0.012 * height)], second)
    return layer.coverage()


def draw_view(look: Look, pose: Pose, scene: Scene, size: tuple[int, int] = (64, 64),
              background: np.ndarray | None = None, front=None) -> RenderedView:
    """Draw one view at ``size`` (height, width). ``background``/``front``: :func:`_render_scene` of ``scene`` at
    this size, passed by callers that draw many views of one scene."""
    height, width = size
    if background is None:
        background, front = _render_scene(scene, size)
    p = _figure(look, pose)
    unit, origin = _place(look, pose, scene, p, size)

    def px(point):
        return origin + unit * np.asarray(point[:2])

    visible_face = _face_visible(pose)
    layer = _Layer(size, _supersampling(size))
    _draw_figure(layer, look, pose, p, px, unit, visible_face)
    person, alpha = layer.coverage()
    image = person + (1 - alpha[..., None]) * background
    if front is not None:  # the object in front hides part of the person
        image = front[0] + (1 - front[1][..., None]) * image
        alpha = alpha * (1 - front[1])
    points = []
    for name in JOINTS:
        x, y = px(p[name])
        inside = 0 <= x <= width and 0 <= y <= height
        points.append([x, y, 1.0] if inside and visible_face.get(name, True) else [-1.0, -1.0, 0.0])
    return RenderedView(
        image=Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8)),
        mask=Image.fromarray(np.where(alpha >= 0.5, 255, 0).astype(np.uint8)),
        keypoints=Keypoints.from_array(points, width, height),
        background=Image.fromarray(np.clip(np.rint(background), 0, 255).astype(np.uint8)),
    )


# ----------------------------------------------------------------------------- datasets
@dataclass
class DatasetSummary:
    root: Path
    seed: int
    image_size: tuple[int, int]
    views_per_identity: int
    train: list[str]
    test: list[str]
    seconds: float
    pose_families: dict[str, int] = field(default_factory=dict)

    @property
    def identities(self) -> int:
        return len(self.train) + len(self.test)

    @property
    def images(self) -> int:
        return self.identities * self.views_per_identity


def identity_name(index: int, count: int) -> str:
    return f"id{index:0{max(4, len(str(count - 1)))}d}"


def identity_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of identity ``index``: its look, scene and poses depend on (seed, index) only."""
    return np.random.default_rng([seed, index])


def _check_dataset_arguments(identities: int, size, views_per_identity: int, test_fraction: float) -> None:
    if identities < 1:
        raise InvalidArgumentError(f"identities must be at least 1, got {identities}.")
    if views_per_identity < 2:
        raise InvalidArgumentError(f"views_per_identity must be at least 2 (training draws several views of one "
                                   f"person), got {views_per_identity}.")
    if min(size) < MIN_SIDE:
        raise InvalidArgumentError(f"size {size[0]}x{size[1]} (HxW) is too small: people need at least "
                                   f"{MIN_SIDE}x{MIN_SIDE} pixels to carry a look.")
    if not 0.0 <= test_fraction < 1.0:
        raise InvalidArgumentError(f"test_fraction must be in [0, 1), got {test_fraction}.")


def _split(seed: int, names: list[str], test_fraction: float) -> tuple[list[str], list[str]]:
    count = round(len(names) * test_fraction)
    if test_fraction > 0 and len(names) >= 2:
        count = min(max(count, 1), len(names) - 1)
    order = np.random.default_rng([seed, 2**31]).permutation(len(names))  # a stream no identity uses
    test = sorted(names[i] for i in order[:count])
    return [n for n in names if n not in set(test)], test


def make_dataset(out: str | os.PathLike, identities: int, seed: int = 0, size: tuple[int, int] = (64, 64),
                 views_per_identity: int = 6, test_fraction: float = 0.1) -> DatasetSummary:
    """Generate ``identities`` people with ``views_per_identity`` views each into ``out`` (the trainer's dataset
    layout), split into train/test by identity. Files go beside what ``out`` holds, all at once at the end."""
    size = (int(size[0]), int(size[1]))
    _check_dataset_arguments(identities, size, views_per_identity, test_fraction)
    start = time.perf_counter()
    names = [identity_name(i, identities) for i in range(identities)]
    train, test = _split(seed, names, test_fraction)
    people, families = {}, {}
    with OutputFolder(out) as folder:
        for index, name in enumerate(names):
            rng = identity_rng(seed, index)
            look = sample_look(rng)
            scene = sample_scene(rng, look)
            background, front = _render_scene(scene, size)
            views = []
            for k in range(views_per_identity):
                pose = sample_pose(rng, can_sit=scene.seat is not None)
                view = draw_view(look, pose, scene, size, background, front)
                folder.save_image(f"image/{name}/{k}.png", view.image)
                folder.save_image(f"dwpose/{name}/{k}.png", render_pose(view.keypoints))
                folder.save_image(f"mask/{name}/{k}.png", view.mask)
                folder.write_json(f"keypoints/{name}/{k}.json", view.keypoints.to_json())
                views.append({"pose": pose.family, "edge_cut": pose.edge_cut})
                families[pose.family] = families.get(pose.family, 0) + 1
            folder.save_image(f"background/{name}.png", view.background)
            people[name] = {"look": asdict(look), "scene": asdict(scene), "views": views}
        for split, members in (("train", train), ("test", test)):
            folder.write_json(f"{split}.json", [[f"image/{n}/{k}.png" for k in range(views_per_identity)]
                                                for n in members])
        folder.write_json("dataset.json", {
            "generator": "imagpose.train.synthetic", "version": GENERATOR_VERSION, "seed": seed,
            "identities": identities, "views_per_identity": views_per_identity, "image_size": list(size),
            "test_fraction": test_fraction, "train": train, "test": test, "people": people,
        })
    return DatasetSummary(root=Path(out), seed=seed, image_size=size, views_per_identity=views_per_identity,
                          train=train, test=test, seconds=time.perf_counter() - start, pose_families=families)


# ----------------------------------------------------------------------------- the shipped demo samples
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
