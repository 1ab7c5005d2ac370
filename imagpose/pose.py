"""Pose input: OpenPose-18 keypoints and their rendering as the official (DWPose/ControlNet) renderer does.

Rendering, as ``dwpose/util.py`` of the official code:
    1. black canvas;
    2. 17 limbs as filled ellipses (``cv2.ellipse2Poly``, half-length x stick width 4 px, 1-degree steps)
       in the 18-colour OpenPose palette;
    3. the whole canvas times 0.6 (limbs dimmed);
    4. the 18 joints as radius-4 filled circles in full colour;
    5. optional hands (2 x 21 keypoints): lines of thickness 2 in HSV-rainbow colours, joints as radius-4
       circles in (0, 0, 255). Face landmarks and feet are not drawn.
Coordinates are normalised to [0, 1] internally (as DWPose's ``candidate``), so a pose renders at any size.

Accepted inputs (:func:`load_pose`):
    - a pre-rendered pose image (used as given);
    - arrays ``(18, 2)`` (x, y; a negative coordinate marks a missing joint) or ``(18, 3)`` (x, y, confidence;
      confidence <= ``min_confidence`` marks a missing joint), in pixels of a ``width`` x ``height`` image or
      normalised to [0, 1];
    - JSON: our format ``{"format": "openpose18", "width", "height", "keypoints": [[x, y, c], ...],
      "hands": optional [[[x, y, c] x 21] x 2]}`` or OpenPose's ``{"people": [{"pose_keypoints_2d": [...]}]}``
      (its image size from ``canvas_width``/``canvas_height`` or the ``width``/``height`` arguments).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InputFileError

KEYPOINT_NAMES = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "right_eye", "left_eye",
    "right_ear", "left_ear",
)
# 1-based joint pairs; the renderer draws the first 17 (the last two, ear-shoulder links, are never drawn)
LIMBS = (
    (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13), (13, 14),
    (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (3, 17), (6, 18),
)
COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
HAND_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
    (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)
STICK_WIDTH = 4
LIMB_DIMMING = 0.6
JOINT_RADIUS = 4
HAND_EPS = 0.01  # the official renderer's ``eps``: pixel coordinates must exceed it


class PoseError(InputFileError):
    """Keypoints that cannot be rendered (NaN, out of the image, wrong shape)."""


@dataclass(frozen=True)
class Keypoints:
    """OpenPose-18 body keypoints (and optional hands) normalised to [0, 1].

    Attributes:
        xy: (18, 2) float64 normalised (x, y); rows of missing joints are ignored.
        visible: (18,) bool.
        width, height: size of the image the keypoints were measured on (pixels).
        hands: optional (2, 21, 2) normalised hand keypoints; a negative value marks a missing joint.
    """

    xy: np.ndarray
    visible: np.ndarray
    width: int
    height: int
    hands: np.ndarray | None = None

    @classmethod
    def from_array(cls, points, width: int, height: int, normalized: bool = False, min_confidence: float = 0.3,
                   hands=None) -> Keypoints:
        arr = np.asarray(points, dtype=np.float64)
        if arr.shape not in ((18, 2), (18, 3)):
            raise PoseError(f"Expected OpenPose-18 keypoints of shape (18, 2) or (18, 3), got {arr.shape}.")
        if width <= 0 or height <= 0:
            raise PoseError(f"Keypoint image size must be positive, got {width}x{height}.")
        if np.isnan(arr).any() or np.isinf(arr).any():
            bad = [KEYPOINT_NAMES[i] for i in np.where(~np.isfinite(arr).all(axis=1))[0]]
            raise PoseError(f"Keypoints contain NaN/inf at {bad}; mark missing joints with -1 (or confidence 0).")
        xy = arr[:, :2].copy()
        visible = (xy >= 0).all(axis=1)
        if arr.shape[1] == 3:
            visible &= arr[:, 2] > min_confidence
        if not normalized:
            xy = xy / np.array([width, height], dtype=np.float64)
        outside = visible & ((xy < 0) | (xy > 1)).any(axis=1)
        if outside.any():
            i = int(np.where(outside)[0][0])
            px = arr[i, :2]
            raise PoseError(
                f"Keypoint {KEYPOINT_NAMES[i]!r} at ({px[0]:g}, {px[1]:g}) lies outside the {width}x{height} image"
                f"{' (normalised coordinates must be in [0, 1])' if normalized else ''}; fix it or mark it "
                "missing with -1."
            )
        hand_xy = None
        if hands is not None:
            hand_arr = np.asarray(hands, dtype=np.float64)
            if hand_arr.shape[:2] != (2, 21) or hand_arr.shape[2] not in (2, 3):
                raise PoseError(f"Hands must have shape (2, 21, 2|3), got {hand_arr.shape}.")
            if not np.isfinite(hand_arr).all():
                raise PoseError("Hand keypoints contain NaN/inf; mark missing joints with -1.")
            hand_xy = hand_arr[..., :2].copy()
            missing = (hand_xy < 0).any(axis=-1)
            if hand_arr.shape[2] == 3:
                missing |= hand_arr[..., 2] <= min_confidence
            if not normalized:
                hand_xy = hand_xy / np.array([width, height], dtype=np.float64)
            hand_xy[missing] = -1.0
        return cls(xy=xy, visible=visible, width=int(width), height=int(height), hands=hand_xy)

    def to_json(self) -> dict:
        pixels = self.xy * np.array([self.width, self.height])
        points = [[float(x), float(y), 1.0] if v else [-1.0, -1.0, 0.0] for (x, y), v in zip(pixels, self.visible)]
        data = {"format": "openpose18", "width": self.width, "height": self.height, "keypoints": points}
        if self.hands is not None:
            hands = []
            for hand in self.hands:
                hands.append([[float(x * self.width), float(y * self.height), 1.0] if x >= 0 else [-1.0, -1.0, 0.0]
                              for x, y in hand])
            data["hands"] = hands
        return data


def keypoints_from_json(data: dict | str | Path, width: int | None = None, height: int | None = None,
                        min_confidence: float = 0.3) -> Keypoints:
    """Parse our ``openpose18`` JSON or an OpenPose output JSON (first person) into :class:`Keypoints`."""
    source = "<dict>"
    if not isinstance(data, dict):
        source = str(data)
        try:
            data = json.loads(Path(data).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PoseError(f"Cannot read pose JSON {source}: {exc}") from exc
    if data.get("format") == "openpose18":
        w, h = data.get("width", width), data.get("height", height)
        points, hands = data.get("keypoints"), data.get("hands")
    elif "people" in data:
        if not data["people"]:
            raise PoseError(f"OpenPose JSON {source} has no person.")
        person = data["people"][0]
        points = np.asarray(person.get("pose_keypoints_2d", []), dtype=np.float64).reshape(-1, 3)
        w, h = data.get("canvas_width", width), data.get("canvas_height", height)
        hands = None
        if person.get("hand_left_keypoints_2d") and person.get("hand_right_keypoints_2d"):
            hands = [np.asarray(person["hand_left_keypoints_2d"]).reshape(21, 3),
                     np.asarray(person["hand_right_keypoints_2d"]).reshape(21, 3)]
    else:
        raise PoseError(f"Pose JSON {source} is neither 'openpose18' format nor OpenPose output ('people').")
    if w is None or h is None:
        raise PoseError(f"Pose JSON {source} does not give the image size; pass width and height.")
    return Keypoints.from_array(points, int(w), int(h), min_confidence=min_confidence, hands=hands)


def render_pose(keypoints: Keypoints, width: int | None = None, height: int | None = None,
                draw_hands: bool = True) -> Image.Image:
    """Render keypoints to an RGB pose image of ``width`` x ``height`` (default: the keypoints' image size)."""
    import cv2

    width = width or keypoints.width
    height = height or keypoints.height
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    xy, visible = keypoints.xy, keypoints.visible
    for i in range(17):
        a, b = LIMBS[i][0] - 1, LIMBS[i][1] - 1
        if not (visible[a] and visible[b]):
            continue
        ys = np.array([xy[a, 1], xy[b, 1]]) * float(height)
        xs = np.array([xy[a, 0], xy[b, 0]]) * float(width)
        length = math.hypot(ys[0] - ys[1], xs[0] - xs[1])
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        polygon = cv2.ellipse2Poly((int(np.mean(xs)), int(np.mean(ys))), (int(length / 2), STICK_WIDTH),
                                   int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, COLORS[i])
    canvas = (canvas * LIMB_DIMMING).astype(np.uint8)
    for i in range(18):
        if visible[i]:
            cv2.circle(canvas, (int(xy[i, 0] * width), int(xy[i, 1] * height)), JOINT_RADIUS, COLORS[i],
                       thickness=-1)
    if draw_hands and keypoints.hands is not None:
        _draw_hands(canvas, keypoints.hands)
    return Image.fromarray(canvas)


def _draw_hands(canvas: np.ndarray, hands: np.ndarray) -> None:
    import colorsys

    import cv2

    height, width = canvas.shape[:2]
    for peaks in hands:
        for ie, (a, b) in enumerate(HAND_EDGES):
            x1, y1 = int(peaks[a, 0] * width), int(peaks[a, 1] * height)
            x2, y2 = int(peaks[b, 0] * width), int(peaks[b, 1] * height)
            if min(x1, y1, x2, y2) > HAND_EPS:
                color = tuple(c * 255 for c in colorsys.hsv_to_rgb(ie / float(len(HAND_EDGES)), 1.0, 1.0))
                cv2.line(canvas, (x1, y1), (x2, y2), color, thickness=2)
        for x, y in peaks:
            px, py = int(x * width), int(y * height)
            if px > HAND_EPS and py > HAND_EPS:
                cv2.circle(canvas, (px, py), JOINT_RADIUS, (0, 0, 255), thickness=-1)
