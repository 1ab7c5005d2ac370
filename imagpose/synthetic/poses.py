"""The pose prior: standing, walking, arms raised or out, hands on hips, three-quarter and side views, seated, and
sometimes cut by the frame edge."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imagpose.errors import InvalidArgumentError

from .draws import pick

POSE_FAMILIES = ("standing", "walking", "arms_raised", "arms_out", "hands_on_hips", "three_quarter", "side",
                 "seated")
_FAMILY_WEIGHTS = (0.17, 0.2, 0.12, 0.07, 0.08, 0.12, 0.14, 0.1)
EDGE_CUT_PROBABILITY = 0.08


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
        yaw = {"walking": pick(rng, (0.0, 35.0, 85.0)), "side": rng.uniform(75, 100),
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
        edge_cut = pick(rng, ("left", "right", "bottom"))
        amount = float(rng.uniform(0.2, 0.45) if edge_cut != "bottom" else rng.uniform(1.2, 1.5))
    return Pose(family=family, yaw=float(yaw), head_yaw=float(rng.normal(0, 12)), lean=float(lean),
                bend=float(rng.normal(0, 3)), arms=tuple(tuple(float(v) for v in a) for a in arms),
                legs=tuple(tuple(float(v) for v in leg) for leg in legs), x=float(rng.uniform(0.38, 0.62)),
                scale=float(rng.uniform(0.95, 1.04)), edge_cut=edge_cut, edge_amount=amount)
