"""Training checkpoints through accelerate's ``save_state`` / ``load_state``: every process writes its own part (DDP,
FSDP and DeepSpeed each have theirs), the folder is staged and renamed into place, pruned to the last N, resumed
exactly.

    OUT/checkpoints/step-000200/
        model.safetensors        the prepared model (accelerate; FSDP and DeepSpeed write their own sharded files)
        optimizer.bin            AdamW's state (accelerate; read back with ``weights_only=True``)
        scheduler.bin            the LR schedule (accelerate)
        random_states_<rank>.pkl every RNG of each process (accelerate; read back with ``weights_only=True``)
        ema.safetensors          the EMA weights and settings, when EMA is on (a save hook, :func:`register_ema`)
        state.json               step, samples seen, the loss log up to the step, the run's config: written last

accelerate's own ``register_for_checkpointing`` would keep the EMA as a pickle it reads back with
``weights_only=False``; the hook keeps it in safetensors instead (as diffusers' training examples do).

A checkpoint is written into ``checkpoints/.step-NNNNNN.partial`` and renamed to ``step-NNNNNN`` only when every
process has written its files and ``state.json`` is there, so a crash or Ctrl-C never leaves a half-written
checkpoint that a resume would pick up. Data order and the objective's random numbers are functions of
(seed, step) (``imagpose.train.data``, ``imagpose.train.loop``), so the step alone puts them back where they were;
``log.csv`` is an output, rewritten from the checkpoint's rows on resume, never read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from imagpose.errors import InputFileError
from imagpose.io import check_safetensors_file, write_json
from imagpose.json_parsing import parse_json

CHECKPOINTS = "checkpoints"
STEP_FOLDER = re.compile(r"^step-(\d{6,})$")
PARTIAL_FOLDER = re.compile(r"^\.step-(\d{6,})\.partial$")
STATE_FILE = "state.json"
EMA_FILE = "ema.safetensors"
# accelerate's files of one process's checkpoint, as it names them (accelerate.utils.constants)
ACCELERATE_FILES = ("optimizer.bin", "scheduler.bin")


class DamagedCheckpointError(InputFileError):
    """A checkpoint file that cannot be read back (truncated weights, a broken optimizer file, a state.json that is
    not what this trainer wrote); the message names the file."""


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
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def checkpoint_step(folder: Path) -> int:
    """The step a checkpoint folder (``step-NNNNNN``) was written at."""
    return int(STEP_FOLDER.match(Path(folder).name).group(1))


def latest_checkpoint(out: str | Path) -> Path | None:
    found = list_checkpoints(out)
    return found[-1][1] if found else None


# ----------------------------------------------------------------------------- writing
def save_checkpoint(accelerator, out: str | Path, step: int, state: dict, keep: int = 3) -> Path:
    """Every process calls this: ``accelerator.save_state`` into the staging folder, then (main process)
    ``state.json``, the rename into place and the deletion of the oldest checkpoints beyond ``keep`` (only folders
    this trainer names ``step-NNNNNN``; anything else in ``checkpoints/`` is left alone)."""
    final = step_folder(Path(out), step)
    staging = final.with_name(f".{final.name}.partial")
    main = accelerator.is_main_process
    if main:
        _remove_ours(staging)  # a partial checkpoint of an earlier, interrupted save
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if main:
        write_json(staging / STATE_FILE, {**state, "step": step})
        _remove_ours(final)  # the same step saved again (a run stopped there and resumed)
        os.replace(staging, final)
        for _, old in list_checkpoints(out)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _remove_ours(folder: Path) -> None:
    if folder.is_dir() and (STEP_FOLDER.match(folder.name) or PARTIAL_FOLDER.match(folder.name)):
        shutil.rmtree(folder)


def register_ema(accelerator, ema, names: list[str]) -> None:
    """Save the EMA (``diffusers.training_utils.EMAModel`` over the parameters ``names``) with every
    ``accelerator.save_state`` as ``ema.safetensors`` (weights, and its settings in the metadata), and load it back
    with every ``load_state``."""

    def save(models, weights, output_dir) -> None:
        if accelerator.is_main_process:
            settings = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
            tensors = {name: p.detach().contiguous().cpu() for name, p in zip(names, ema.shadow_params)}
            save_file(tensors, str(Path(output_dir) / EMA_FILE), metadata={"ema": json.dumps(settings)})

    def load(models, input_dir) -> None:
        path = Path(input_dir) / EMA_FILE
        with safe_open(str(path), framework="pt") as handle:
            settings = json.loads(handle.metadata()["ema"])
            shadow = [handle.get_tensor(name) for name in names]
        ema.load_state_dict(settings | {"shadow_params": shadow})

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


# ----------------------------------------------------------------------------- reading
def verify_checkpoint(folder: str | Path, ema: bool = False) -> dict:
    """The checkpoint's ``state.json`` once every file of it reads back (weights and optimizer are read in full, as
    ``load_state`` will); otherwise :class:`DamagedCheckpointError` naming the file."""
    from accelerate.utils import load

    folder = Path(folder)
    if (folder / "optimizer.pt").is_file() and (folder / "rng.safetensors").is_file():
        raise DamagedCheckpointError(f"Checkpoint {folder} was written by an earlier imagpose (its own format: "
                                     "optimizer.pt, rng.safetensors); this one resumes accelerate save_state "
                                     "folders. Finish that run with the imagpose that started it, or start afresh.")
    state = _read_state(folder)
    models = sorted(folder.glob("model*.safetensors"))
    ours = {STATE_FILE, EMA_FILE, *ACCELERATE_FILES}
    if not models and all(p.name in ours or p.name.startswith("random_states_") for p in folder.iterdir()):
        raise DamagedCheckpointError(f"Checkpoint {folder} holds no model weights; it is not a complete imagpose "
                                     "training checkpoint.")
    for path in [*models, *([folder / EMA_FILE] if ema else [])]:  # header and coverage: load_state reads the data
        _read(path, lambda p: check_safetensors_file(p, "it is damaged"))
    # the plain layout (one process, DDP) holds accelerate's optimizer and schedule files; FSDP and DeepSpeed keep
    # theirs in their own files, which their loaders check
    pickles = [folder / name for name in ACCELERATE_FILES] if models else []
    for path in [*pickles, *sorted(folder.glob("random_states_*.pkl"))]:
        _read(path, lambda p: load(p, map_location="cpu"))
    return state


def _read(path: Path, reader):
    if not path.is_file():
        raise DamagedCheckpointError(f"Checkpoint {path.parent} lacks {path.name}; it is not a complete imagpose "
                                     "training checkpoint.")
    try:
        return reader(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors and torch.load report a damaged file with many types
        raise DamagedCheckpointError(f"{path} cannot be read ({type(exc).__name__}: {exc}).") from exc


def _read_state(folder: Path) -> dict:
    path = folder / STATE_FILE
    try:
        state = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedCheckpointError(f"{path} is not valid JSON ({exc}).") from exc
    if not isinstance(state, dict):
        raise DamagedCheckpointError(f"{path} does not hold a JSON object (it holds a {type(state).__name__}).")
    expected = {"step": int, "samples_seen": int, "log": list}
    wrong = [key for key, kind in expected.items() if type(state.get(key)) is not kind]
    if wrong:
        raise DamagedCheckpointError(f"{path} is not a training state of this trainer ({', '.join(wrong)} missing or "
                                     "of the wrong type).")
    if state["step"] != checkpoint_step(folder):
        raise DamagedCheckpointError(f"{path} says step {state['step']}, but its folder is {folder.name}.")
    return state


def load_latest_usable(out: str | Path, ema: bool = False) -> tuple[Path | None, dict | None, list[str]]:
    """(folder, state) of the newest checkpoint under ``out`` that reads back whole, or (None, None) when there is
    none, and a line for each newer one that was damaged and passed over (left on disk as it is)."""
    passed_over = []
    for _, folder in reversed(list_checkpoints(out)):
        try:
            return folder, verify_checkpoint(folder, ema), passed_over
        except DamagedCheckpointError as exc:
            passed_over.append(f"{exc} Passing over {folder.name}.")
    if passed_over:
        raise DamagedCheckpointError("No checkpoint of this run reads back whole:\n  " + "\n  ".join(passed_over)
                                     + f"\nStart afresh in another folder, or remove {Path(out) / CHECKPOINTS}.")
    return None, None, passed_over


def load_checkpoint(accelerator, folder: Path) -> None:
    """``accelerator.load_state(folder)`` (model, optimizer, LR schedule, this process's RNG, EMA), after
    :func:`verify_checkpoint`; a model that does not fit the checkpoint is an error naming it."""
    try:
        accelerator.load_state(str(folder))
    except RuntimeError as exc:  # load_state_dict's missing / unexpected keys or shapes
        first = str(exc).strip().splitlines()[0]
        raise InputFileError(f"Checkpoint {folder} does not hold this run's model ({first}); resume it with the "
                             "config and stage that wrote it, or start afresh without --resume.") from exc
