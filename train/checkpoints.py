"""Training checkpoints: written atomically, pruned to the last N, resumed exactly.

    OUT/checkpoints/step-000200/
        model.safetensors        the trainable networks (``unet.*``, ``pose_guider.*``, ``flc_tokenizer.*``)
        ema.safetensors          the EMA weights, when EMA is on
        optimizer.pt             AdamW's state dict (tensors and numbers only: read with ``weights_only=True``)
        rng.safetensors          every torch generator state (CPU, each CUDA device) of this process
        state.json               step, samples seen, LR-scheduler state, numpy's RNG state, the config, the time

A checkpoint is staged in a hidden folder beside the final one and renamed into place only when every file is
written (:class:`imagpose.io.OutputFolder`), so a crash or Ctrl-C never leaves a half-written checkpoint that a
resume would pick up. Data order and the objective's random numbers are functions of (seed, step)
(``imagpose.train.data``, ``imagpose.train.loop``), so the step alone puts them back where they were.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from imagpose.errors import InputFileError
from imagpose.io import OutputFolder

CHECKPOINTS = "checkpoints"
STEP_FOLDER = re.compile(r"^step-(\d{6,})$")


def step_folder(out: Path, step: int) -> Path:
    return Path(out) / CHECKPOINTS / f"step-{step:06d}"


def list_checkpoints(out: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under ``out/checkpoints``, oldest first."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = STEP_FOLDER.match(child.name)
        if match and (child / "state.json").is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def checkpoint_step(folder: Path) -> int:
    """The step a checkpoint folder (``step-NNNNNN``) was written at."""
    return int(STEP_FOLDER.match(Path(folder).name).group(1))


def latest_checkpoint(out: str | Path) -> Path | None:
    found = list_checkpoints(out)
    return found[-1][1] if found else None


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().contiguous().cpu() for key, value in state.items()}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """(torch generator states as tensors, numpy's global state as JSON-able data)."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{index}"] = state
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return tensors, {"kind": kind, "keys": keys.tolist(), "position": int(position), "has_gauss": int(has_gauss),
                     "cached_gaussian": float(cached)}


def set_rng_state(tensors: dict[str, torch.Tensor], numpy_state: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    np.random.set_state((numpy_state["kind"], np.asarray(numpy_state["keys"], dtype=np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))


def save_checkpoint(out: str | Path, step: int, model_state: dict[str, torch.Tensor], optimizer_state: dict,
                    state: dict, ema_state: dict[str, torch.Tensor] | None = None, keep: int = 3) -> Path:
    """Write ``out/checkpoints/step-<step>`` atomically, then delete the oldest checkpoints beyond ``keep``
    (only folders this trainer names ``step-NNNNNN``; anything else in ``checkpoints/`` is left alone)."""
    folder = step_folder(Path(out), step)
    rng_tensors, numpy_state = rng_state()
    with OutputFolder(folder) as staged:
        save_file(_contiguous(model_state), str(staged.path("model.safetensors")))
        if ema_state is not None:
            save_file(_contiguous(ema_state), str(staged.path("ema.safetensors")))
        torch.save(optimizer_state, staged.path("optimizer.pt"))
        save_file(rng_tensors, str(staged.path("rng.safetensors")))
        staged.write_json("state.json", {**state, "step": step, "numpy_rng": numpy_state})
    for _, old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old)
    return folder


def load_checkpoint(folder: str | Path) -> dict:
    """Everything :func:`save_checkpoint` wrote: model, ema (or None), optimizer, rng tensors and the JSON state."""
    folder = Path(folder)
    for name in ("model.safetensors", "optimizer.pt", "rng.safetensors", "state.json"):
        if not (folder / name).is_file():
            raise InputFileError(f"Checkpoint {folder} lacks {name}; it is not a complete imagpose training "
                                 "checkpoint. Resume from another step-NNNNNN folder or start afresh.")
    return {
        "model": load_file(str(folder / "model.safetensors")),
        "ema": load_file(str(folder / "ema.safetensors")) if (folder / "ema.safetensors").is_file() else None,
        "optimizer": torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True),
        "rng": load_file(str(folder / "rng.safetensors")),
        "state": json.loads((folder / "state.json").read_text()),
    }
