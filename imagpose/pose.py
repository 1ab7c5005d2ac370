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
      (its image size from ``canvas_width``/``canvas_height`` or the ``width``/``height`` arguments). A JSON
      file is a regular file of UTF-8 text of at most 10 MB; anything else raises :class:`PoseError` naming it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InputFileError
from .json_parsing import parse_json

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
HAND_JOINTS = 21
# Keypoint files are a few kB; the cap keeps a wrong path (a video, a log) from being read into memory.
MAX_POSE_JSON_BYTES = 10 * 2**20


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
            if hand_arr.ndim != 3 or hand_arr.shape[:2] != (2, HAND_JOINTS) or hand_arr.shape[2] not in (2, 3):
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


def keypoints_from_json(data: dict | str | os.PathLike, width: int | None = None, height: int | None = None,
                        min_confidence: float = 0.3) -> Keypoints:
    """Parse our ``openpose18`` JSON or an OpenPose output JSON (first person) into :class:`Keypoints`.

    ``width`` and ``height`` give the image size the keypoints were measured on when the JSON does not.
    Raises :class:`PoseError` naming the file and the problem for anything that is not such a JSON.
    """
    source = "<dict>"
    if isinstance(data, (str, os.PathLike)):
        source = str(data)
        data = _read_json(Path(data))
    try:
        points, hands, (width_key, height_key) = _parse_pose_json(data)
        w, h = data.get(width_key, width), data.get(height_key, height)
        if w is None or h is None:
            raise PoseError(f"does not give the image size the keypoints were measured on (no '{width_key}'/"
                            f"'{height_key}'); pass width and height (CLI: --pose-size WIDTHxHEIGHT).")
        return Keypoints.from_array(points, _pixels(w, width_key), _pixels(h, height_key),
                                    min_confidence=min_confidence, hands=hands)
    except PoseError as exc:
        raise PoseError(f"Pose JSON {source}: {exc}") from exc


def _read_json(path: Path):
    """The parsed JSON of a keypoint file: a regular file of at most MAX_POSE_JSON_BYTES bytes of UTF-8 text."""
    if not path.exists():
        raise PoseError(f"Pose JSON {path}: file not found; check the path.")
    if path.is_dir():
        raise PoseError(f"Pose JSON {path} is a directory; pass a keypoint .json file.")
    if not path.is_file():
        raise PoseError(f"Pose JSON {path} is not a regular file (a device, pipe or socket); pass a keypoint .json "
                        "file.")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_POSE_JSON_BYTES + 1)  # bounded, whatever the file system reports as its size
    except OSError as exc:
        raise PoseError(f"Pose JSON {path} cannot be read ({exc.strerror or exc}).") from exc
    if len(raw) > MAX_POSE_JSON_BYTES:
        raise PoseError(f"Pose JSON {path} is larger than the {MAX_POSE_JSON_BYTES // 2**20} MB a keypoint file "
                        "can be (18 joints take well under 1 kB); check that it is the right file.")
    try:
        text = raw.decode("utf-8-sig")  # JSON is UTF-8 (RFC 8259); a byte-order mark is tolerated
    except UnicodeDecodeError as exc:
        raise PoseError(f"Pose JSON {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                        "save it as UTF-8 JSON.") from exc
    try:
        return parse_json(text)
    except json.JSONDecodeError as exc:
        raise PoseError(f"Pose JSON {path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}).") \
            from exc


def _parse_pose_json(data) -> tuple[np.ndarray, np.ndarray | None, tuple[str, str]]:
    """(points (18, 2|3), hands (2, 21, 2|3) or None, the keys of the image width and height in this format)."""
    if not isinstance(data, dict):
        raise PoseError(f"must be a JSON object ({{...}}), got {_json_type(data)}; expected our 'openpose18' format "
                        "or OpenPose output with 'people'.")
    if data.get("format") == "openpose18":
        if "keypoints" not in data:
            raise PoseError("has no 'keypoints' (18 [x, y, confidence] lists).")
        points = _joint_rows(data["keypoints"], "keypoints", len(KEYPOINT_NAMES))
        hands = data.get("hands")
        if hands is not None:
            if not isinstance(hands, list) or len(hands) != 2:
                raise PoseError(f"'hands' must be a list of 2 hands (left, right), got {_json_type(hands)}.")
            left, right = (_joint_rows(hand, f"hands[{i}]", HAND_JOINTS) for i, hand in enumerate(hands))
            if left.shape != right.shape:
                raise PoseError("'hands' mixes [x, y] and [x, y, confidence] joints; use one form for both hands.")
            hands = np.stack([left, right])
        return points, hands, ("width", "height")
    if "people" in data:
        people = data["people"]
        if not isinstance(people, list):
            raise PoseError(f"'people' must be a list of persons, got {_json_type(people)}.")
        if not people:
            raise PoseError("has no person ('people' is empty).")
        person = people[0]
        if not isinstance(person, dict):
            raise PoseError(f"person 0 is not a JSON object (got {_json_type(person)}).")
        if "pose_keypoints_2d" not in person:
            raise PoseError("person 0 has no 'pose_keypoints_2d'.")
        points = _joint_triples(person["pose_keypoints_2d"], "pose_keypoints_2d", len(KEYPOINT_NAMES))
        hands = None
        if person.get("hand_left_keypoints_2d") and person.get("hand_right_keypoints_2d"):
            hands = np.stack([_joint_triples(person[key], key, HAND_JOINTS)
                              for key in ("hand_left_keypoints_2d", "hand_right_keypoints_2d")])
        return points, hands, ("canvas_width", "canvas_height")
    raise PoseError("is neither our 'openpose18' format nor OpenPose output ('people').")


def _joint_rows(value, name: str, joints: int) -> np.ndarray:
    """``[[x, y(, confidence)], ...]`` -> (joints, 2|3)."""
    if not isinstance(value, list) or not all(isinstance(row, list) for row in value):
        raise PoseError(f"'{name}' must be a list of [x, y] or [x, y, confidence] lists, got {_json_type(value)}.")
    lengths = sorted({len(row) for row in value})
    if len(lengths) > 1 or (lengths and lengths[0] not in (2, 3)):
        raise PoseError(f"'{name}' is ragged: every joint needs [x, y] or [x, y, confidence], got rows of "
                        f"{' and '.join(map(str, lengths))} values.")
    _check_joint_count(len(value), name, joints)
    return _numbers([v for row in value for v in row], name).reshape(joints, -1)


def _joint_triples(value, name: str, joints: int) -> np.ndarray:
    """OpenPose's flat ``[x0, y0, c0, x1, ...]`` -> (joints, 3)."""
    if not isinstance(value, list):
        raise PoseError(f"'{name}' must be a flat list of x, y, confidence numbers, got {_json_type(value)}.")
    if len(value) % 3:
        raise PoseError(f"'{name}' has {len(value)} values, not a multiple of 3 (x, y, confidence per joint).")
    _check_joint_count(len(value) // 3, name, joints)
    return _numbers(value, name).reshape(joints, 3)


def _check_joint_count(count: int, name: str, joints: int) -> None:
    if count != joints:
        expected = ("a hand needs 21 joints" if joints == HAND_JOINTS else "OpenPose-18 needs 18 joints (OpenPose's "
                    "default BODY_25 model writes 25: run OpenPose with --model_pose COCO)")
        raise PoseError(f"'{name}' has {count} joints; {expected}.")


def _numbers(values: list, name: str) -> np.ndarray:
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PoseError(f"'{name}' holds {value!r}, which is not a number; coordinates and confidences must be "
                            "numbers (mark a missing joint with -1).")
    return np.asarray(values, dtype=np.float64)


def _pixels(value, name: str) -> int:
    """A positive integer image side in pixels (an integral float such as 176.0 is accepted)."""
    integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral or value <= 0:
        raise PoseError(f"'{name}' must be a positive integer number of pixels, got {value!r}.")
    return int(value)


def _json_type(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


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
