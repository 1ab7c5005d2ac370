"""The look and scene priors: what makes an identity recognisable (skin, hair, garments and their colours, build)
and its surroundings (background, a bench behind, an object in front)."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from .body import ANKLE_HEIGHT, SHIN
from .draws import pick

Color = tuple[int, int, int]

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


def sample_look(rng: np.random.Generator) -> Look:
    skin = pick(rng, _SKIN)
    hair_style = pick(rng, ("short", "long", "bun", "buzz", "hat"), (0.35, 0.3, 0.1, 0.1, 0.15))
    top = _garment_color(rng, (skin,), 70.0)
    top_pattern = pick(rng, ("solid", "stripes", "two_tone"), (0.45, 0.3, 0.25))
    bottom = pick(rng, ("trousers", "shorts", "skirt"), (0.55, 0.15, 0.3))
    bottom_color = _garment_color(rng, (top,), 100.0)
    legs = skin if rng.random() < 0.7 or bottom == "trousers" else _garment_color(rng, (bottom_color,))
    return Look(
        skin=skin,
        hair=pick(rng, _HAIR, _HAIR_WEIGHTS),
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
        shoes=_garment_color(rng, (legs,), 60.0) if rng.random() < 0.4 else pick(rng, _NEUTRALS[:3]),
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
    kind = pick(rng, ("plain", "gradient", "wall_floor", "noise"), (0.25, 0.25, 0.35, 0.15))
    texture = pick(rng, ("none", "stripes", "checks", "planks"), (0.3, 0.3, 0.2, 0.2))
    shift = rng.uniform(0.08, 0.18) * (1 if value < 0.5 else -1)
    texture_color = _hsv(hue, saturation, min(max(value + shift, 0.0), 1.0))
    ground = float(rng.uniform(0.95, 0.98))
    seat = front_object = None
    if rng.random() < 0.35:
        top = ground - (SHIN + ANKLE_HEIGHT) * look.height  # a seated person's feet reach the ground
        seat = (float(rng.uniform(0.4, 0.6)), float(rng.uniform(0.55, 0.8)), top, _garment_color(rng, clothes, 70.0))
    if rng.random() < 0.2:
        kind_of_object = pick(rng, ("crate", "plant", "low_wall"))
        main = _garment_color(rng, clothes, 80.0) if kind_of_object != "plant" else (150, 90, 60)
        second = (50, 130, 60) if kind_of_object == "plant" else tuple(int(c * 0.7) for c in main)
        width = rng.uniform(0.25, 0.4) if kind_of_object != "low_wall" else rng.uniform(0.5, 0.8)
        front_object = (kind_of_object, float(rng.uniform(0.2, 0.8)), float(width), float(rng.uniform(0.18, 0.3)),
                        main, second)
    return Scene(kind=kind, wall=wall, floor=floor, texture=texture, texture_color=texture_color,
                 horizon=float(rng.uniform(0.6, 0.8)), noise_seed=int(rng.integers(2**31)),
                 ground=ground, seat=seat, front_object=front_object)
