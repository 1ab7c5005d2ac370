"""One view of a look in a pose and a scene, drawn at a size: the image, the exact foreground mask, the keypoints
and the background. Body parts are tapered capsules and convex polygons drawn back to front at
``_supersampling(size)`` times the output size and box-filtered down; the coverage of the person's pixels not
hidden by the object in front, thresholded at 1/2, is the mask."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw

from imagpose.pose import Keypoints

from .body import HEAD_RX, HEAD_RY
from .figure import JOINTS, face_visible, figure_points, yaw_matrix
from .looks import Color, Look, Scene
from .poses import Pose


@dataclass
class RenderedView:
    image: Image.Image  # RGB
    mask: Image.Image  # L, 255 = person
    keypoints: Keypoints
    background: Image.Image  # RGB, the scene without the person (the object in front included)


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
    facing = (yaw_matrix(pose.yaw) @ yaw_matrix(pose.head_yaw) @ np.array([0.0, 0.0, 1.0]))
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


def render_scene(scene: Scene, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
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
    """Draw one view at ``size`` (height, width). ``background``/``front``: :func:`render_scene` of ``scene`` at
    this size, passed by callers that draw many views of one scene."""
    height, width = size
    if background is None:
        background, front = render_scene(scene, size)
    p = figure_points(look, pose)
    unit, origin = _place(look, pose, scene, p, size)

    def px(point):
        return origin + unit * np.asarray(point[:2])

    visible_face = face_visible(pose)
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
