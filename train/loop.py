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
import csv
import io
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from imagpose.io import OutputFolder

from . import checkpoints
from .config import OptimizerConfig, StageConfig

LOG_FIELDS = ("step", "loss", "lr", "samples_per_second", "seconds")


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


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The parameters this task trains, by name (what a checkpoint's model file holds)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor], where) -> None:
    """Copy a checkpoint's tensors into the parameters this task trains: exactly those names, same shapes."""
    from imagpose.errors import InputFileError

    ours = trainable_state(model)
    if set(state) != set(ours) or any(state[k].shape != ours[k].shape for k in ours):
        missing, extra = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
        raise InputFileError(f"Checkpoint {where} does not hold this run's trainable parameters (missing "
                             f"{missing[:3]}, unexpected {extra[:3]}, or shapes differ); resume it with the config "
                             "and stage that wrote it, or start afresh without --resume.")
    with torch.no_grad():
        for name, parameter in ours.items():
            parameter.copy_(state[name])


def train(task: TrainingTask, run: RunSettings, settings: StageConfig, out: str | Path, *, resume: bool = False,
          stop_after: int | None = None, progress: bool = True) -> TrainingResult:
    """Train ``task`` for ``settings.steps`` optimizer steps into ``out`` (see the module docstring).

    ``resume``: continue from the latest checkpoint in ``out/checkpoints`` (a fresh start when there is none).
    ``stop_after``: stop after that step with a checkpoint and no product, as an interrupted run would (training
    in chunks on preemptible machines); the LR schedule is still the one of ``settings.steps``.
    """
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    out = Path(out)
    require_matplotlib()
    accelerator = make_accelerator(run, settings, out)
    main = accelerator.is_main_process

    # 1. The task's data and frozen modules
    latest = checkpoints.latest_checkpoint(out) if resume else None
    task.setup(accelerator, out, checkpoints.checkpoint_step(latest) if latest is not None else 0)

    # 2. Optimizer, LR schedule and EMA
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

    # 3. Resume: weights, optimizer, LR schedule, step and every RNG; data and draws follow from the step
    start_step, log_rows, samples_seen = 0, [], 0
    if latest is not None:
        saved = checkpoints.load_checkpoint(latest)
        load_trainable_state(accelerator.unwrap_model(model), saved["model"], latest)
        optimizer.load_state_dict(saved["optimizer"])
        lr_schedule.load_state_dict(saved["state"]["lr_schedule"])
        if ema is not None and saved["ema"] is not None:
            ema.load_state_dict(saved["state"]["ema"] | {"shadow_params": list(saved["ema"].values())})
        checkpoints.set_rng_state(saved["rng"], saved["state"]["numpy_rng"])
        start_step, samples_seen = saved["state"]["step"], saved["state"].get("samples_seen") or 0
        log_rows = read_log(out / "log.csv", start_step)
        accelerator.print(f"Resumed {task.name} from {latest} (step {start_step}).")

    batches = task.batches(start_step, settings, accelerator.process_index, accelerator.num_processes)
    if main:
        accelerator.init_trackers(f"imagpose-{task.name}", config={"task": task.name, "steps": settings.steps,
                                                                  "learning_rate": settings.learning_rate})

    # 4. The loop
    step, accumulated, micro, samples_since_log, samples_at_start = start_step, [], 0, 0, samples_seen
    started = last_log = time.perf_counter()
    bar = tqdm(total=settings.steps, initial=start_step, desc=task.name, disable=not (progress and main),
               dynamic_ncols=True)
    model.train()
    for batch in batches:
        with accelerator.accumulate(model), accelerator.autocast():
            loss, samples = task.loss(model, batch, step, micro, accelerator)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), optimizer_config.max_grad_norm)
            optimizer.step()
            lr_schedule.step()
            optimizer.zero_grad(set_to_none=True)
        accumulated.append(accelerator.reduce(loss.detach(), "mean"))
        samples_since_log += samples * accelerator.num_processes
        samples_seen += samples * accelerator.num_processes
        micro += 1
        if not accelerator.sync_gradients:
            continue
        step, micro = step + 1, 0
        if ema is not None:
            ema.step(trainable_parameters(accelerator.unwrap_model(model)))
        step_loss = float(torch.stack(accumulated).mean())
        accumulated = []
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"{task.name}: the loss became {step_loss} at step {step}; lower the learning "
                                     "rate or use mixed_precision 'no'/'bf16'.")
        if step % settings.log_every == 0 or step == settings.steps:
            now = time.perf_counter()
            row = {"step": step, "loss": step_loss, "lr": lr_schedule.get_last_lr()[0],
                   "samples_per_second": samples_since_log / max(now - last_log, 1e-9),
                   "seconds": (log_rows[-1]["seconds"] if log_rows else 0.0) + now - last_log}
            log_rows.append(row)
            last_log, samples_since_log = now, 0
            accelerator.log({k: v for k, v in row.items() if k != "step"}, step=step)
            bar.set_postfix(loss=f"{step_loss:.4f}", samples_s=f"{row['samples_per_second']:.1f}")
        bar.update(1)
        stopping = step == stop_after
        if main and (step % settings.checkpoint_every == 0 or step == settings.steps or stopping):
            write_log(out, log_rows)
            checkpoints.save_checkpoint(
                out, step, trainable_state(accelerator.unwrap_model(model)), optimizer.state_dict(),
                {"stage": task.name, "lr_schedule": lr_schedule.state_dict(),
                 "samples_seen": samples_seen, "ema": _ema_config(ema), "config": run.record},
                ema_state=_ema_tensors(ema, accelerator.unwrap_model(model)), keep=settings.keep_checkpoints)
        if main and (step % settings.validate_every == 0 or step == settings.steps):
            task.validate(out, step, inference_copy(accelerator, model, ema))
        accelerator.wait_for_everyone()
        if stopping:
            break
    bar.close()
    final_loss = log_rows[-1]["loss"] if log_rows else float("nan")
    if step == stop_after and step < settings.steps:
        accelerator.end_training()
        return TrainingResult(task.name, out, step, time.perf_counter() - started, float("nan"), final_loss,
                              out / "log.csv")

    # 5. The product (EMA weights when EMA is on)
    product = out
    if main:
        write_log(out, log_rows)
        product = task.finish(out, inference_copy(accelerator, model, ema))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    seconds = time.perf_counter() - started
    return TrainingResult(task.name, product, settings.steps, seconds,
                          (samples_seen - samples_at_start) / max(seconds, 1e-9), final_loss, out / "log.csv")


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


def _ema_config(ema) -> dict | None:
    if ema is None:
        return None
    return {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}


def _ema_tensors(ema, model) -> dict[str, torch.Tensor] | None:
    if ema is None:
        return None
    names = list(trainable_state(model))
    return dict(zip(names, ema.shadow_params))


# ----------------------------------------------------------------------------- log.csv and loss.png
def write_log(out: Path, rows: list[dict]) -> None:
    """log.csv and loss.png, replaced atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=LOG_FIELDS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{row[k]:.6g}" if isinstance(row[k], float) else row[k] for k in LOG_FIELDS})
    with OutputFolder(out) as folder:
        folder.path("log.csv").write_text(text.getvalue())
        if rows:
            plot_loss({out.name or "run": rows}, folder.path("loss.png"))


def read_log(path: Path, up_to_step: int) -> list[dict]:
    """The rows of log.csv up to ``up_to_step`` (a resumed run rewrites what came after its checkpoint)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = [{k: (int(v) if k == "step" else float(v)) for k, v in row.items()} for row in csv.DictReader(handle)]
    return [row for row in rows if row["step"] <= up_to_step]


def require_matplotlib() -> None:
    """loss.png needs matplotlib: fail before training, not at the first checkpoint."""
    import importlib.util

    from imagpose.errors import MissingDependencyError

    if importlib.util.find_spec("matplotlib") is None:
        raise MissingDependencyError("Training plots its loss with matplotlib, which is not installed: "
                                     "pip install -c constraints.txt 'imagpose[train]'.")


def plot_loss(curves: dict[str, list[dict]], path: Path, smoothing: int = 20) -> None:
    """Loss against step for each run (raw, and a running mean over ``smoothing`` logged steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.4), squeeze=False)
    for axis, (name, rows) in zip(axes[0], curves.items()):
        steps = [r["step"] for r in rows]
        losses = [r["loss"] for r in rows]
        axis.plot(steps, losses, color="0.75", linewidth=0.8, label="loss")
        window = max(1, min(smoothing, len(losses)))
        smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
                  for i in range(len(losses))]
        axis.plot(steps, smooth, color="C0", linewidth=1.5, label=f"running mean ({window})")
        positive = [loss for loss in losses if loss > 0]
        if positive and len(positive) == len(losses) and max(positive) > 20 * min(positive):
            axis.set_yscale("log")  # a start far above the rest would flatten the curve that matters
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.set_ylabel("loss")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
