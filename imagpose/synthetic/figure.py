"""The 3-D stick figure (figure units: standing height 1, y down, z toward the camera, origin at the pelvis; its
dimensions in :mod:`.body`): its OpenPose-18 joints and face points, and every point of it for a look in a pose."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .body import FOOT, FOREARM, NECK, SHIN, SPINE, THIGH, TORSO_DEPTH, UPPER_ARM

if TYPE_CHECKING:
    from .looks import Look
    from .poses import Pose


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


def _direction(abduction: float, flexion: float, side: float) -> np.ndarray:
    """Unit vector of a limb hanging down (0, 0), swung out by ``abduction`` and forward by ``flexion`` degrees."""
    a, f = math.radians(abduction), math.radians(flexion)
    return np.array([side * math.sin(a), math.cos(a) * math.cos(f), math.cos(a) * math.sin(f)])


def yaw_matrix(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])  # facing +z turns toward +x for degrees > 0


def figure_points(look: Look, pose: Pose) -> dict[str, np.ndarray]:
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
    head_turn = yaw_matrix(pose.head_yaw)
    for name, (offset, _, _) in FACE.items():
        p[name] = head + head_turn @ np.array(offset)
    for corner, (dx, dz) in {"a": (1, 1), "b": (1, -1), "c": (-1, -1), "d": (-1, 1)}.items():
        p[f"chest_{corner}"] = neck_base + np.array([dx * (look.shoulders + 0.02), 0.015, dz * TORSO_DEPTH])
        p[f"waist_{corner}"] = 0.55 * neck_base + np.array([dx * (look.hips + 0.03), 0.0, dz * TORSO_DEPTH])
        p[f"hipline_{corner}"] = np.array([dx * (look.hips + 0.045), 0.015, dz * TORSO_DEPTH])
        p[f"crotch_{corner}"] = np.array([dx * (look.hips + 0.04), 0.08, dz * TORSO_DEPTH])
    turn = yaw_matrix(pose.yaw)
    return {name: turn @ point for name, point in p.items()}


def face_visible(pose: Pose) -> dict[str, bool]:
    turn = yaw_matrix(pose.yaw) @ yaw_matrix(pose.head_yaw)
    return {name: (turn @ np.array(normal))[2] > threshold for name, (_, normal, threshold) in FACE.items()}
