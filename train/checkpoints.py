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
from imagpose.json_parsing import parse_json

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


class DamagedCheckpointError(InputFileError):
    """A checkpoint file that cannot be read back (truncated weights, a broken optimizer file, a state.json that is
    not what this trainer wrote); the message names the file."""


def load_checkpoint(folder: str | Path) -> dict:
    """Everything :func:`save_checkpoint` wrote: model, ema (or None), optimizer, rng tensors and the JSON state.
    A missing or unreadable file raises :class:`DamagedCheckpointError` naming it."""
    folder = Path(folder)
    for name in ("model.safetensors", "optimizer.pt", "rng.safetensors", "state.json"):
        if not (folder / name).is_file():
            raise DamagedCheckpointError(f"Checkpoint {folder} lacks {name}; it is not a complete imagpose training "
                                         "checkpoint.")
    ema = folder / "ema.safetensors"
    return {
        "model": _read(folder / "model.safetensors", load_file),
        "ema": _read(ema, load_file) if ema.is_file() else None,
        "optimizer": _read(folder / "optimizer.pt",
                           lambda path: torch.load(path, map_location="cpu", weights_only=True)),
        "rng": _read(folder / "rng.safetensors", load_file),
        "state": _read_state(folder),
    }


def _read(path: Path, reader):
    try:
        return reader(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors and torch.load report a damaged file with many types
        raise DamagedCheckpointError(f"{path} cannot be read ({type(exc).__name__}: {exc}).") from exc


def _read_state(folder: Path) -> dict:
    path = folder / "state.json"
    try:
        state = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedCheckpointError(f"{path} is not valid JSON ({exc}).") from exc
    if not isinstance(state, dict):
        raise DamagedCheckpointError(f"{path} does not hold a JSON object (it holds a {type(state).__name__}).")
    expected = {"step": int, "lr_schedule": dict, "numpy_rng": dict}
    wrong = [key for key, kind in expected.items() if type(state.get(key)) is not kind]
    if wrong:
        raise DamagedCheckpointError(f"{path} is not a training state of this trainer ({', '.join(wrong)} missing or "
                                     "of the wrong type).")
    if state["step"] != checkpoint_step(folder):
        raise DamagedCheckpointError(f"{path} says step {state['step']}, but its folder is {folder.name}.")
    return state


def load_latest_usable(out: str | Path) -> tuple[Path | None, dict | None, list[str]]:
    """(folder, contents) of the newest checkpoint under ``out`` that reads back whole, or (None, None) when there
    is none, and a line for each newer one that was damaged and passed over (left on disk as it is)."""
    passed_over = []
    for _, folder in reversed(list_checkpoints(out)):
        try:
            return folder, load_checkpoint(folder), passed_over
        except DamagedCheckpointError as exc:
            passed_over.append(f"{exc} Passing over {folder.name}.")
    if passed_over:
        raise DamagedCheckpointError("No checkpoint of this run reads back whole:\n  " + "\n  ".join(passed_over)
                                     + f"\nStart afresh in another folder, or remove {Path(out) / CHECKPOINTS}.")
    return None, None, passed_over
