"""The training loop on Hugging Face accelerate, shared by every training task (the three IMAGPose stages and the
autoencoder).

A :class:`TrainingTask` says what one step computes (its model, its batches, its loss) and what the run leaves
behind (validation outputs, the product folder); this loop owns everything else: the accelerator, AdamW and its LR
schedule, gradient accumulation and clipping, EMA, mixed precision, trackers, ``log.csv`` / ``loss.png``, the
progress bar, checkpoints (:mod:`imagpose.train.checkpoints`), exact resume and ``stop_after``. The same code runs
on one CPU, several GPUs or several nodes (``accelerate launch``; DeepSpeed ZeRO-2 and FSDP configs in
``train/accelerate/``). A task reads its own rows of every global batch and draws its random numbers from
generators seeded by (seed, step, ...), so N processes with batch B compute what one process with batch N x B
does, and a resumed run continues exactly.

    OUT/ (one task)
        log.csv, loss.png    loss, LR, samples/s per step         checkpoints/step-NNNNNN/   (checkpoints.py)
        trackers/            accelerate's trackers (TensorBoard)   + what the task writes (its product, validation)
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from imagpose.errors import IMAGPoseError, InvalidArgumentError

from . import checkpoints
from .config import OptimizerConfig, StageConfig
from .training_log import require_matplotlib, write_log


@dataclass(frozen=True)
class RunSettings:
    """The settings a whole run shares (``TrainConfig``'s top level) beside the task's own length and batch."""

    seed: int
    optimizer: OptimizerConfig
    mixed_precision: str = "no"
    ema_decay: float | None = None
    trackers: tuple[str, ...] = ()
    record: dict | None = None  # the run's config as plain data: saved in every checkpoint


class TrainingTask(Protocol):
    """What one task trains. ``model`` holds the networks the optimizer steps (parameters with ``requires_grad``)."""

    name: str
    model: torch.nn.Module

    def setup(self, accelerator, out: Path, start_step: int) -> None:
        """Check the data and write what the run records before training (main process), move frozen modules to
        the device; ``start_step``: the step a resumed run continues from (0 for a fresh run)."""

    def batches(self, start_step: int, settings: StageConfig, process_index: int,
                num_processes: int) -> Iterable[dict]:
        """This process's micro-batches from ``start_step`` on (``settings.gradient_accumulation_steps`` per step)."""

    def loss(self, model, batch: dict, step: int, micro: int, accelerator) -> tuple[torch.Tensor, int]:
        """(loss of this process's micro-batch, images it holds)."""

    def validate(self, out: Path, step: int, trained: torch.nn.Module) -> None:
        """Write validation outputs for the weights at ``step`` (``trained``: a CPU float32 copy)."""

    def finish(self, out: Path, trained: torch.nn.Module) -> Path:
        """Write the product (a pipeline or autoencoder folder) from the final weights; its path."""


@dataclass
class TrainingResult:
    name: str
    product: Path
    steps: int
    seconds: float
    samples_per_second: float
    final_loss: float
    log_csv: Path


def make_accelerator(run: RunSettings, settings: StageConfig, out: Path):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    trackers = [name for name in run.trackers if _installed(name)]
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=run.mixed_precision,
                       gradient_accumulation_steps=settings.gradient_accumulation_steps,
                       log_with=trackers or None,
                       project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "trackers")))


def _installed(tracker: str) -> bool:
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    try:
        return LOGGER_TYPE_TO_CLASS[tracker].requires_logging_directory is not None and _importable(tracker)
    except KeyError:
        return False


def _importable(tracker: str) -> bool:
    import importlib.util

    module = {"tensorboard": "tensorboard", "comet_ml": "comet_ml"}.get(tracker, tracker)
    return importlib.util.find_spec(module) is not None


def weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def trainable_names(model) -> list[str]:
    """The names of the parameters this task trains, in :func:`trainable_parameters` order."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


class TrainingDivergedError(IMAGPoseError):
    """The run's loss or weights stopped being usable numbers (a learning rate too high, an overflow)."""


# Trained diffusion and autoencoder weights stay within a few tens; 1e6 only catches runs that blew up
WEIGHT_LIMIT = 1e6


def train(task: TrainingTask, run: RunSettings, settings: StageConfig, out: str | Path, *, resume: bool = False,
          stop_after: int | None = None, progress: bool = True) -> TrainingResult:
    """Train ``task`` for ``settings.steps`` optimizer steps into ``out`` (see the module docstring).

    ``resume``: continue from the latest checkpoint in ``out/checkpoints`` (a fresh start when there is none).
    ``stop_after``: stop after that step with a checkpoint and no product, as an interrupted run would (training
    in chunks on preemptible machines); the LR schedule is still the one of ``settings.steps``.
    """
    out = Path(out)
    require_matplotlib()
    latest = checkpoints.latest_checkpoint(out)
    if latest is not None and not resume:
        raise InvalidArgumentError(f"{out} already holds a run of its own ({latest.name}); continue it with --resume, "
                                   "or train into another folder (a fresh run would overwrite its weights).")
    latest, saved, passed_over = (checkpoints.load_latest_usable(out, ema=run.ema_decay is not None) if resume
                                  else (None, None, []))
    if saved is not None:
        check_resumable(saved.get("config"), run.record, latest)
    accelerator = make_accelerator(run, settings, out)
    main = accelerator.is_main_process
    for line in passed_over:
        accelerator.print(f"imagpose train: {line}")

    # 1. The task's data and frozen modules
    task.setup(accelerator, out, checkpoints.checkpoint_step(latest) if latest is not None else 0)

    # 2. Optimizer, LR schedule and EMA
    state = prepare_training(task, run, settings, accelerator, out)

    # 3. Resume: weights, optimizer, LR schedule, EMA, every process's RNG, the step; data and draws follow from it
    position = resume_from(state, latest, saved) if latest is not None else Position()
    batches = task.batches(position.step, settings, accelerator.process_index, accelerator.num_processes)
    if main:
        accelerator.init_trackers(f"imagpose-{task.name}", config={"task": task.name, "steps": settings.steps,
                                                                  "learning_rate": settings.learning_rate})

    # 4. The loop
    samples_at_start = position.samples_seen
    started = position.last_log = time.perf_counter()
    bar = tqdm(total=settings.steps, initial=position.step, desc=task.name, disable=not (progress and main),
               dynamic_ncols=True)
    state.model.train()
    for batch in batches:
        if not micro_step(state, position, batch):
            continue  # accumulating gradients: the optimizer step is not complete yet
        log_step(state, position, finish_step(state, position), bar)
        stopping = position.step == stop_after
        save_and_validate(state, position, stopping)
        if stopping:
            break
    bar.close()
    final_loss = position.log_rows[-1]["loss"] if position.log_rows else float("nan")
    if position.step == stop_after and position.step < settings.steps:
        accelerator.end_training()
        return TrainingResult(task.name, out, position.step, time.perf_counter() - started, float("nan"), final_loss,
                              out / "log.csv")

    # 5. The product (EMA weights when EMA is on)
    product = out
    if main:
        write_log(out, position.log_rows)
        product = task.finish(out, inference_copy(accelerator, state.model, state.ema))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    seconds = time.perf_counter() - started
    return TrainingResult(task.name, product, settings.steps, seconds,
                          (position.samples_seen - samples_at_start) / max(seconds, 1e-9), final_loss,
                          out / "log.csv")


@dataclass
class TrainingState:
    """What the loop steps: the task, its prepared model, optimizer and LR schedule, and the EMA (or None)."""

    task: TrainingTask
    run: RunSettings
    settings: StageConfig
    out: Path
    accelerator: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_schedule: object
    ema: object | None


@dataclass
class Position:
    """Where a run stands: the optimizer step, the micro-batch within it, samples seen, the logged rows."""

    step: int = 0
    micro: int = 0
    samples_seen: int = 0
    log_rows: list[dict] = field(default_factory=list)
    losses: list[torch.Tensor] = field(default_factory=list)  # the current step's micro-batch losses
    samples_since_log: int = 0
    last_log: float = 0.0


def prepare_training(task: TrainingTask, run: RunSettings, settings: StageConfig, accelerator,
                     out: Path) -> TrainingState:
    """AdamW over the task's trainable parameters, the LR schedule and the EMA, prepared by the accelerator."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    optimizer_config = run.optimizer
    optimizer = torch.optim.AdamW(trainable_parameters(task.model), lr=settings.learning_rate,
                                  betas=tuple(optimizer_config.betas), weight_decay=optimizer_config.weight_decay,
                                  eps=optimizer_config.eps)
    lr_schedule = get_scheduler(optimizer_config.lr_scheduler, optimizer,
                                num_warmup_steps=optimizer_config.warmup_steps * accelerator.num_processes,
                                num_training_steps=settings.steps * accelerator.num_processes)
    ema = EMAModel(trainable_parameters(task.model), decay=run.ema_decay) if run.ema_decay else None
    model, optimizer, lr_schedule = accelerator.prepare(task.model, optimizer, lr_schedule)
    if ema is not None:
        ema.to(accelerator.device)
        checkpoints.register_ema(accelerator, ema, trainable_names(task.model))
    return TrainingState(task, run, settings, out, accelerator, model, optimizer, lr_schedule, ema)


# settings a resumed run must share with its checkpoint: they decide the data, the draws and the schedule the saved
# weights and optimizer state belong to (logging, checkpoint and validation settings may change)
RESUME_INVARIANTS = frozenset({"model", "seed", "tile_size", "grid", "min_targets", "max_targets", "max_scale", "flip",
                               "batch_size", "gradient_accumulation_steps", "steps", "learning_rate", "lr_scheduler",
                               "warmup_steps", "betas", "eps", "weight_decay", "prediction_type", "snr_gamma",
                               "noise_offset", "ema_decay", "mixed_precision"})


def check_resumable(saved: dict | None, current: dict | None, checkpoint: Path) -> None:
    """Refuse to resume ``checkpoint`` (whose run recorded ``saved``) with settings of ``RESUME_INVARIANTS`` that
    differ in ``current``, naming each."""
    if not isinstance(saved, dict) or not isinstance(current, dict):
        return
    before, now = _leaves(saved), _leaves(current)
    changed = [f"{key}: {before[key]!r} -> {now[key]!r}" for key in sorted(before.keys() & now.keys())
               if key.rsplit(".", 1)[-1] in RESUME_INVARIANTS and before[key] != now[key]]
    if changed:
        raise InvalidArgumentError(f"{checkpoint} was trained with other settings than this run's ("
                                   + "; ".join(changed) + "). Resume with the settings it was saved with, or train "
                                   "into another folder.")


def _leaves(data: dict, prefix: str = "") -> dict:
    leaves = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            leaves.update(_leaves(value, f"{name}."))
        else:
            leaves[name] = list(value) if isinstance(value, tuple) else value
    return leaves


def resume_from(state: TrainingState, latest: Path, saved: dict) -> Position:
    """Load the checkpoint ``latest`` (whose ``state.json`` is ``saved``) into ``state`` through accelerate; the
    position it was saved at, with the loss log up to it."""
    checkpoints.load_checkpoint(state.accelerator, latest)
    position = Position(step=saved["step"], samples_seen=saved["samples_seen"], log_rows=saved["log"])
    state.accelerator.print(f"Resumed {state.task.name} from {latest} (step {position.step}).")
    return position


def micro_step(state: TrainingState, position: Position, batch: dict) -> bool:
    """Forward and backward one micro-batch (the optimizer steps on the last of a step's accumulation); whether
    that completed an optimizer step."""
    accelerator, model, optimizer = state.accelerator, state.model, state.optimizer
    with accelerator.accumulate(model), accelerator.autocast():
        loss, samples = state.task.loss(model, batch, position.step, position.micro, accelerator)
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), state.run.optimizer.max_grad_norm)
        optimizer.step()
        state.lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
    position.losses.append(accelerator.reduce(loss.detach(), "mean"))
    position.samples_since_log += samples * accelerator.num_processes
    position.samples_seen += samples * accelerator.num_processes
    position.micro += 1
    if not accelerator.sync_gradients:
        return False
    position.step, position.micro = position.step + 1, 0
    return True


def finish_step(state: TrainingState, position: Position) -> float:
    """After an optimizer step: the EMA update, and the step's loss (the mean over its micro-batches and
    processes), which must be finite."""
    if state.ema is not None:
        state.ema.step(trainable_parameters(state.accelerator.unwrap_model(state.model)))
    step_loss = float(torch.stack(position.losses).mean())
    position.losses = []
    if not math.isfinite(step_loss):
        raise TrainingDivergedError(f"{state.task.name}: the loss became {step_loss} at step {position.step} "
                                    f"(learning rate {state.settings.learning_rate:g}); lower the learning rate, or "
                                    "use mixed_precision 'no' or 'bf16'. Nothing of this step was saved.")
    return step_loss


def check_weights(state: TrainingState, step: int) -> None:
    """Refuse to save weights that are not finite or beyond ``WEIGHT_LIMIT`` in magnitude: a diverged run (a
    normalised network can keep a finite loss while its weights grow without bound, then makes NaN images)."""
    model = state.accelerator.unwrap_model(state.model)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            largest = float(parameter.detach().abs().max())
            if not largest <= WEIGHT_LIMIT:
                raise TrainingDivergedError(
                    f"{state.task.name}: at step {step} the weight {name} reached {largest:g} (learning rate "
                    f"{state.settings.learning_rate:g}): the run diverged; lower the learning rate. The last "
                    "checkpoint before it is kept; nothing of this step was saved.")


def log_step(state: TrainingState, position: Position, step_loss: float, bar) -> None:
    """A log row (loss, LR, samples/s) every ``log_every`` steps and at the last; the progress bar."""
    step, settings = position.step, state.settings
    if step % settings.log_every == 0 or step == settings.steps:
        now = time.perf_counter()
        rows = position.log_rows
        row = {"step": step, "loss": step_loss, "lr": state.lr_schedule.get_last_lr()[0],
               "samples_per_second": position.samples_since_log / max(now - position.last_log, 1e-9),
               "seconds": (rows[-1]["seconds"] if rows else 0.0) + now - position.last_log}
        rows.append(row)
        position.last_log, position.samples_since_log = now, 0
        state.accelerator.log({k: v for k, v in row.items() if k != "step"}, step=step)
        bar.set_postfix(loss=f"{step_loss:.4f}", samples_s=f"{row['samples_per_second']:.1f}")
    bar.update(1)


def save_and_validate(state: TrainingState, position: Position, stopping: bool) -> None:
    """A checkpoint (every process writes its part) and log.csv every ``checkpoint_every`` steps, at the last and
    when ``stopping``; validation outputs (main process) every ``validate_every`` steps and at the last. Then every
    process waits."""
    accelerator, settings, step, out = state.accelerator, state.settings, position.step, state.out
    main = accelerator.is_main_process
    if step % settings.checkpoint_every == 0 or step == settings.steps or stopping:
        check_weights(state, step)  # every process: a diverged run stops on all of them
        if main:
            write_log(out, position.log_rows)
        checkpoints.save_checkpoint(
            accelerator, out, step, {"stage": state.task.name, "samples_seen": position.samples_seen,
                                     "log": position.log_rows, "config": state.run.record},
            keep=settings.keep_checkpoints)
    if main and (step % settings.validate_every == 0 or step == settings.steps):
        state.task.validate(out, step, inference_copy(accelerator, state.model, state.ema))
    accelerator.wait_for_everyone()


def inference_copy(accelerator, model, ema) -> torch.nn.Module:
    """The current weights as a CPU float32 module in eval mode (EMA weights when EMA is on); training goes on
    with the original."""
    trained = copy.deepcopy(accelerator.unwrap_model(model)).to("cpu", torch.float32).eval()
    if ema is not None:
        ema.copy_to(trainable_parameters(trained))
    for module in trained.modules():
        if getattr(module, "gradient_checkpointing", False) and hasattr(module, "disable_gradient_checkpointing"):
            module.disable_gradient_checkpointing()
    return trained
