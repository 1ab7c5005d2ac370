"""One way to load a pipeline, for the CLI, the SDK's users and both servers: a pipeline folder, the name of a
model shipped inside the package, or an architecture preset with random weights.

    pipe = load_pipeline("path/to/pipeline")          # IMAGPosePipeline.save_pretrained / `imagpose convert`
    pipe = load_pipeline("tiny-people")               # a shipped model, by name (imagpose.pretrained)
    pipe = load_pipeline(preset="tiny", weights_seed=0)
    pipe = load_pipeline()                            # the shipped trained model
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .pretrained import SHIPPED_MODELS, shipped_model_dir


def resolve_model(model: str | os.PathLike | None) -> Path:
    """The folder of ``model``: a path as given, the shipped model when ``model`` is None, or the shipped model of
    that name (``tiny-people``, ``tiny-people-lcm``) when no folder of that name exists here."""
    if model is None:
        return shipped_model_dir()
    if str(model) in SHIPPED_MODELS and not Path(model).exists():
        return shipped_model_dir(str(model))
    return Path(model)


def load_pipeline(model: str | os.PathLike | None = None, *, preset: str | None = None, weights_seed: int = 0,
                  device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """An :class:`~imagpose.pipeline.IMAGPosePipeline` on ``device`` in ``dtype``.

    Args:
        model: a pipeline folder, or the name of a shipped model (``"tiny-people"``, ``"tiny-people-lcm"``); wins
            over ``preset``.
        preset: an architecture preset ("tiny", "mid", "sd15") with deterministic random weights drawn from
            ``weights_seed``, used when ``model`` is None.
        None for both: the shipped trained model.
    """
    from .pipeline import IMAGPosePipeline
    from .presets import build_pipeline

    if model is None and preset is not None:
        return build_pipeline(preset, seed=weights_seed, device=device, dtype=dtype)
    return IMAGPosePipeline.from_pretrained(resolve_model(model), torch_dtype=dtype).to(device)
