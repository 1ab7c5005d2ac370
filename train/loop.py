"""The training loop of one stage on Hugging Face accelerate, and the three stages in a row.

The same code runs on one CPU, several GPUs or several nodes (``accelerate launch``; DeepSpeed ZeRO-2 and FSDP
configs in ``train/accelerate/``). Each process reads its own rows of every global batch
(:class:`~imagpose.train.data.StepBatches`) and takes its rows of the step's random numbers, drawn for the global
batch from a generator seeded by (seed, stage, step, micro-batch) (:func:`~imagpose.train.objective.draw_objective`),
so N processes with batch B compute what one process with batch N x B does, and a resumed run continues exactly.

    OUT/ (one stage)
        config.yaml           the whole run's config          log.csv, loss.png    loss, LR, samples/s per step
        data_check.txt        what the data check skipped      validation/step-NNNNNN.png   held-out grids
        checkpoints/step-NNNNNN/  (imagpose.train.checkpoints)  pipeline/            the stage's pipeline folder
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from imagpose.errors import InvalidArgumentError
from imagpose.io import OutputFolder
from imagpose.presets import get_preset

from . import checkpoints
from .config import STAGES, TrainConfig
from .data import StepBatches, TrainingDataset, check_dataset, collate, seeded_generator
from .objective import STAGE_DROPOUT, draw_objective, training_loss, training_scheduler
from .stages import build_stage, trainable_parameters
from .validation import validation_requests, write_validation_grid

LOG_FIELDS = ("step", "loss", "lr", "samples_per_second", "seconds")


@dataclass
class StageResult:
    stage: str
    pipeline_dir: Path
    steps: int
    seconds: float
    samples_per_second: float
    final_loss: float
    log_csv: Path


def _accelerator(config: TrainConfig, stage_config, out: Path):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    trackers = [name for name in config.trackers if _installed(name)]
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=config.mixed_precision,
                       gradient_accumulation_steps=stage_config.gradient_accumulation_steps,
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


def _weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The parameters this stage trains, by name (what a checkpoint's model file holds)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor], where) -> None:
    """Copy a checkpoint's tensors into the parameters this stage trains: exactly those names, same shapes."""
    from imagpose.errors import InputFileError

    ours = trainable_state(model)
    if set(state) != set(ours) or any(state[k].shape != ours[k].shape for k in ours):
        missing, extra = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
        raise InputFileError(f"Checkpoint {where} does not hold this stage's trainable parameters (missing "
                             f"{missing[:3]}, unexpected {extra[:3]}, or shapes differ); resume it with the config "
                             "and stage that wrote it, or start afresh without --resume.")
    with torch.no_grad():
        for name, parameter in ours.items():
            parameter.copy_(state[name])


def run_stage(config: TrainConfig, stage: str, data: str | Path, out: str | Path, *,
              init_from: str | Path | None = None, resume: bool = False, stop_after: int | None = None,
              progress: bool = True) -> StageResult:
    """Train one stage; write checkpoints, logs, validation grids and the final pipeline folder into ``out``.

    ``init_from``: the previous stage's pipeline folder (stage2, end2end). ``resume``: continue from the latest
    checkpoint in ``out/checkpoints`` (a fresh start when there is none). ``stop_after``: stop after that step with
    a checkpoint and no pipeline folder, as an interrupted run would (training in chunks on preemptible machines);
    the schedule is still the one of ``steps``.
    """
    if stage not in STAGES:
        raise InvalidArgumentError(f"Unknown stage {stage!r}; the stages are {', '.join(STAGES)}.")
    out = Path(out)
    stage_config = config.stage(stage)
    require_matplotlib()
    accelerator = _accelerator(config, stage_config, out)
    main = accelerator.is_main_process

    # 1. Data: check every entry before anything trains
    report = check_dataset(data, "train")
    if main:
        with OutputFolder(out) as folder:
            folder.path("config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
            folder.path("data_check.txt").write_text(report.summary(limit=10**6) + "\n")
        accelerator.print(report.summary())
    preset = get_preset(config.model)
    tile_size = config.tile_size(stage)
    pad_multiple = 8 * 2 ** (len(preset.unet["block_out_channels"]) - 1)
    dataset = TrainingDataset(report, tile_size, config.data.grid, seed=config.seed,
                              min_targets=config.data.min_targets, max_targets=config.data.max_targets,
                              max_scale=config.data.max_scale, flip=config.data.flip, pad_multiple=pad_multiple,
                              flc_patch_size=preset.flc["patch_size"])

    # 2. Models: the stage's trainable networks and the frozen encoders
    models = build_stage(stage, preset, config.seed, config.weights, init_from)
    if config.gradient_checkpointing:
        models.model.unet.enable_gradient_checkpointing()
    weight_dtype = _weight_dtype(accelerator.mixed_precision)
    cast = {} if weight_dtype == torch.float32 else {"dtype": weight_dtype}  # fp32: no cast (and no diffusers warning)
    vae = models.vae.to(accelerator.device, **cast)
    image_encoder = models.image_encoder.to(accelerator.device, **cast)

    # 3. Optimizer, LR schedule and EMA
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    optimizer_config = config.optimizer
    optimizer = torch.optim.AdamW(trainable_parameters(models.model), lr=stage_config.learning_rate,
                                  betas=tuple(optimizer_config.betas), weight_decay=optimizer_config.weight_decay,
                                  eps=optimizer_config.eps)
    lr_schedule = get_scheduler(optimizer_config.lr_scheduler, optimizer,
                                num_warmup_steps=optimizer_config.warmup_steps * accelerator.num_processes,
                                num_training_steps=stage_config.steps * accelerator.num_processes)
    ema = EMAModel(trainable_parameters(models.model), decay=config.ema_decay) if config.ema_decay else None
    model, optimizer, lr_schedule = accelerator.prepare(models.model, optimizer, lr_schedule)
    if ema is not None:
        ema.to(accelerator.device)

    # 4. Resume: weights, optimizer, LR schedule, step and every RNG; data and draws follow from the step
    start_step, log_rows = 0, []
    latest = checkpoints.latest_checkpoint(out) if resume else None
    if latest is not None:
        saved = checkpoints.load_checkpoint(latest)
        load_trainable_state(accelerator.unwrap_model(model), saved["model"], latest)
        optimizer.load_state_dict(saved["optimizer"])
        lr_schedule.load_state_dict(saved["state"]["lr_schedule"])
        if ema is not None and saved["ema"] is not None:
            ema.load_state_dict(saved["state"]["ema"] | {"shadow_params": list(saved["ema"].values())})
        checkpoints.set_rng_state(saved["rng"], saved["state"]["numpy_rng"])
        start_step = saved["state"]["step"]
        log_rows = read_log(out / "log.csv", start_step)
        accelerator.print(f"Resumed {stage} from {latest} (step {start_step}).")

    sampler = StepBatches(start_step, stage_config.steps, stage_config.batch_size, accelerator.process_index,
                          accelerator.num_processes, stage_config.gradient_accumulation_steps)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=config.data.num_workers)
    scheduler = training_scheduler(config.objective.prediction_type)
    dropout = STAGE_DROPOUT[stage]
    latent_shape = (4, *(side // 8 for side in _canvas_size(dataset)))
    rows = slice(accelerator.process_index * stage_config.batch_size,
                 (accelerator.process_index + 1) * stage_config.batch_size)
    requests = validation_requests(data, config) if main and config.validation.num_requests else []
    if main:
        accelerator.init_trackers(f"imagpose-{stage}", config={"stage": stage, "model": config.model,
                                                              "batch_size": sampler.global_batch})

    # 5. The loop
    step, accumulated, micro = start_step, [], 0
    started = last_log = time.perf_counter()
    samples_since_log = 0
    bar = tqdm(total=stage_config.steps, initial=start_step, desc=stage, disable=not (progress and main),
               dynamic_ncols=True)
    model.train()
    for batch in loader:
        generator = seeded_generator(config.seed, STAGES.index(stage), step, micro)
        draws = draw_objective(generator, stage_config.batch_size * accelerator.num_processes, latent_shape, dropout,
                               config.objective.noise_offset).rows(rows.start, rows.stop)
        batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with accelerator.accumulate(model), accelerator.autocast():
            loss, _ = training_loss(model, vae, image_encoder, scheduler, batch, draws.to(accelerator.device),
                                    config.objective.snr_gamma)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), optimizer_config.max_grad_norm)
            optimizer.step()
            lr_schedule.step()
            optimizer.zero_grad(set_to_none=True)
        accumulated.append(accelerator.reduce(loss.detach(), "mean"))
        micro += 1
        if not accelerator.sync_gradients:
            continue
        step, micro = step + 1, 0
        if ema is not None:
            ema.step(trainable_parameters(accelerator.unwrap_model(model)))
        samples_since_log += sampler.global_batch
        step_loss = float(torch.stack(accumulated).mean())
        accumulated = []
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"{stage}: the loss became {step_loss} at step {step}; lower the learning "
                                     "rate or use mixed_precision 'no'/'bf16'.")
        if step % stage_config.log_every == 0 or step == stage_config.steps:
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
        if main and (step % stage_config.checkpoint_every == 0 or step == stage_config.steps or stopping):
            write_log(out, log_rows)
            checkpoints.save_checkpoint(
                out, step, trainable_state(accelerator.unwrap_model(model)), optimizer.state_dict(),
                {"stage": stage, "lr_schedule": lr_schedule.state_dict(), "samples_seen": step * sampler.global_batch,
                 "ema": _ema_config(ema), "config": config.to_dict()},
                ema_state=_ema_tensors(ema, accelerator.unwrap_model(model)), keep=stage_config.keep_checkpoints)
        if main and requests and (step % stage_config.validate_every == 0 or step == stage_config.steps):
            write_validation_grid(out, step, _pipeline(accelerator, model, models, config, ema), requests, config)
        accelerator.wait_for_everyone()
        if stopping:
            break
    bar.close()
    if step == stop_after and step < stage_config.steps:
        accelerator.end_training()
        return StageResult(stage=stage, pipeline_dir=out / "pipeline", steps=step,
                           seconds=time.perf_counter() - started, samples_per_second=float("nan"),
                           final_loss=log_rows[-1]["loss"], log_csv=out / "log.csv")

    # 6. The stage's pipeline folder (EMA weights when EMA is on)
    pipeline_dir = out / "pipeline"
    if main:
        _pipeline(accelerator, model, models, config, ema).save_pretrained(pipeline_dir)
        write_log(out, log_rows)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    seconds = time.perf_counter() - started
    trained = stage_config.steps - start_step
    return StageResult(stage=stage, pipeline_dir=pipeline_dir, steps=stage_config.steps, seconds=seconds,
                       samples_per_second=trained * sampler.global_batch / max(seconds, 1e-9),
                       final_loss=log_rows[-1]["loss"] if log_rows else float("nan"), log_csv=out / "log.csv")


def _canvas_size(dataset: TrainingDataset) -> tuple[int, int]:
    from imagpose.canvas import GridLayout

    layout = GridLayout(*dataset.grid, *dataset.tile_size, dataset.pad_multiple, 8)
    return layout.canvas_size


def _ema_config(ema) -> dict | None:
    if ema is None:
        return None
    return {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}


def _ema_tensors(ema, model) -> dict[str, torch.Tensor] | None:
    if ema is None:
        return None
    names = list(trainable_state(model))
    return dict(zip(names, ema.shadow_params))


def _pipeline(accelerator, model, models, config: TrainConfig, ema):
    """The current weights as an inference pipeline (CPU copies; the training model is left as it is)."""
    import copy

    from imagpose.pipeline import IMAGPosePipeline
    from imagpose.schedulers import official_ddim_scheduler

    trained = copy.deepcopy(accelerator.unwrap_model(model)).to("cpu", torch.float32).eval()
    if ema is not None:
        ema.copy_to(trainable_parameters(trained))
    if getattr(trained.unet, "gradient_checkpointing", False):
        trained.unet.disable_gradient_checkpointing()
    return IMAGPosePipeline(unet=trained.unet, vae=copy.deepcopy(models.vae).to("cpu", torch.float32),
                            image_encoder=copy.deepcopy(models.image_encoder).to("cpu", torch.float32),
                            flc_tokenizer=trained.flc_tokenizer, pose_guider=trained.pose_guider,
                            scheduler=official_ddim_scheduler(config.inference_beta_schedule))


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
            plot_loss({out.name or "stage": rows}, folder.path("loss.png"))


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
    """Loss against step for each stage (raw, and a running mean over ``smoothing`` logged steps)."""
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
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.set_ylabel("Min-SNR weighted loss")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- all stages
def run_all(config: TrainConfig, data: str | Path, out: str | Path, *, resume: bool = False,
            progress: bool = True) -> list[StageResult]:
    """stage1 -> stage2 -> end2end into ``out/<stage>``, each starting from the previous stage's pipeline; the
    final pipeline is ``out/end2end/pipeline``. With ``resume``, finished stages are kept and the running one
    continues from its latest checkpoint."""
    out = Path(out)
    results, init_from = [], None
    for stage in STAGES:
        if stage not in config.stages:
            continue
        stage_out = out / stage
        done = (stage_out / "pipeline" / "model_index.json").is_file() and _finished(stage_out, config, stage)
        if resume and done:
            results.append(StageResult(stage, stage_out / "pipeline", config.stage(stage).steps, 0.0, 0.0,
                                       read_log(stage_out / "log.csv", 10**12)[-1]["loss"], stage_out / "log.csv"))
        else:
            results.append(run_stage(config, stage, data, stage_out, init_from=init_from, resume=resume,
                                     progress=progress))
        init_from = results[-1].pipeline_dir
    return results


def _finished(stage_out: Path, config: TrainConfig, stage: str) -> bool:
    rows = read_log(stage_out / "log.csv", 10**12)
    return bool(rows) and rows[-1]["step"] >= config.stage(stage).steps
