"""Sample inputs shipped with the package (synthetic people with exact OpenPose-18 keypoints).

``scripts/make_samples.py`` regenerates them with the synthetic people generator (``imagpose.synthetic``).
Names: ``person_{red,blue}_{front,arms_up,walking,hands_on_hips,side}``; each has a 176x256 ``.png`` and a keypoint
``.json``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path


def samples_dir() -> Path:
    return Path(str(resources.files("imagpose.assets") / "samples"))


def sample_names() -> list[str]:
    return sorted(json.loads((samples_dir() / "index.json").read_text()))


def sample(name: str) -> tuple[Path, Path]:
    """(image path, keypoint JSON path) of a shipped sample."""
    folder = samples_dir()
    image, pose = folder / f"{name}.png", folder / f"{name}.json"
    if not image.is_file():
        raise KeyError(f"No sample {name!r}; available: {', '.join(sample_names())}.")
    return image, pose
