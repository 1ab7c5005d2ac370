"""The trained models shipped inside the package: ``tiny-people``, the ``tiny`` architecture trained from scratch
on generated people (``imagpose train all``; how it was made and how well it does: docs/training.md), and
``tiny-people-lcm``, its few-step student (``imagpose train distill``; docs/distillation.md).

``tiny-people`` is the default model of ``imagpose demo``; ``--preset tiny`` still gives the random-weight preset
(tests). Each folder is an ordinary pipeline folder (``IMAGPosePipeline.from_pretrained``, ``--model`` by path or
by name) plus ``training.json``, the record of its training run (tile size, steps, data, evaluation).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from .io import MissingInputFileError

SHIPPED_MODEL = "tiny-people"
SHIPPED_STUDENT = "tiny-people-lcm"
SHIPPED_MODELS = (SHIPPED_MODEL, SHIPPED_STUDENT)
TRAINING_RECORD = "training.json"


def shipped_model_dir(name: str = SHIPPED_MODEL) -> Path:
    """The folder of a shipped trained pipeline (:data:`SHIPPED_MODELS`)."""
    folder = Path(str(resources.files("imagpose.assets") / "models" / name))
    if not (folder / "model_index.json").is_file():
        raise MissingInputFileError(
            f"The shipped model {name!r} is missing from {folder}; reinstall imagpose, or pass a pipeline "
            "folder with --model (or --preset tiny for random weights).")
    return folder


def shown_name(model_dir: str | Path) -> str:
    """How reports name a model folder: a shipped model by its name (not this install's path), others as given."""
    for name in SHIPPED_MODELS:
        folder = Path(str(resources.files("imagpose.assets") / "models" / name))
        if Path(model_dir).resolve() == folder.resolve():
            return name
    return str(model_dir)


def training_record(model_dir: str | Path) -> dict | None:
    """The ``training.json`` a trained pipeline folder carries, or None."""
    path = Path(model_dir) / TRAINING_RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def trained_tile_size(model_dir: str | Path) -> tuple[int, int] | None:
    """(height, width) of the tiles the model was trained on, when its folder records it."""
    record = training_record(model_dir)
    return tuple(record["tile_size"]) if record and "tile_size" in record else None
