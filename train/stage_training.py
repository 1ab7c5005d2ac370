"""The three IMAGPose stages as tasks of the shared training loop (:mod:`imagpose.train.loop`), and all of them in a
row.

    OUT/ (one stage)
        config.yaml           the whole run's config          log.csv, loss.png    loss, LR, samples/s per step
        data_check.txt        what the data check skipped      validation/step-NNNNNN.png   held-out grids
        checkpoints/step-NNNNNN/  (imagpose.train.checkpoints)  pipeline/            the stage's pipeline folder

Each process reads its own rows of every global batch (:class:`~imagpose.train.data.StepBatches`) and takes its
rows of the step's random numbers, drawn for the global batch from a generator seeded by (seed, stage, step,
micro-batch) (:func:`~imagpose.train.objective.draw_objective`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from imagpose.autoencoders import downscale_factor
from imagpose.canvas import pad_multiple_for
from imagpose.io import OutputFolder
from imagpose.presets import get_preset

from .config import STAGES, StageConfig, TrainConfig
from .data import TrainingDataset, check_dataset, process_batches, seeded_generator
from .loop import RunSettings, TrainingResult, train, weight_dtype
from .objective import STAGE_DROPOUT, draw_objective, training_loss, training_scheduler
from .stages import build_stage, check_stage
from .training_log import read_log
from .validation import validation_requests, write_validation_grid


def run_settings(config: TrainConfig) -> RunSettings:
    """The loop's run-wide settings of a training config."""
    return RunSettings(seed=config.seed, optimizer=config.optimizer, mixed_precision=config.mixed_precision,
                       ema_decay=config.ema_decay, trackers=tuple(config.trackers), record=config.to_dict())


class StageTask:
    """One IMAGPose stage: the official objective on the trainer's dataset; the product is a pipeline folder."""

    def __init__(self, config: TrainConfig, stage: str, data: str | Path, init_from: str | Path | None = None):
        check_stage(stage)
        self.name, self.config, self.data = stage, config, Path(data)
        self.settings = config.stage(stage)
        self.models = build_stage(stage, get_preset(config.model), config.seed, config.weights, init_from)
        if config.gradient_checkpointing:
            self.models.model.unet.enable_gradient_checkpointing()
        self.model = self.models.model

    def setup(self, accelerator, out: Path, start_step: int) -> None:
        config, preset = self.config, get_preset(self.config.model)
        report = check_dataset(self.data, "train")  # every entry is checked before anything trains
        self.main = accelerator.is_main_process
        if self.main:
            with OutputFolder(out) as folder:
                folder.path("config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
                folder.path("data_check.txt").write_text(report.summary(limit=10**6) + "\n")
            accelerator.print(report.summary())
        pad_multiple = pad_multiple_for(downscale_factor(self.models.vae), len(preset.unet["block_out_channels"]))
        self.dataset = TrainingDataset(report, config.tile_size(self.name), config.data.grid, seed=config.seed,
                                       min_targets=config.data.min_targets, max_targets=config.data.max_targets,
                                       max_scale=config.data.max_scale, flip=config.data.flip,
                                       pad_multiple=pad_multiple, flc_patch_size=preset.flc["patch_size"])
        dtype = weight_dtype(accelerator.mixed_precision)
        cast = {} if dtype == torch.float32 else {"dtype": dtype}  # fp32: no cast (and no diffusers warning)
        self.vae = self.models.vae.to(accelerator.device, **cast)
        self.image_encoder = self.models.image_encoder.to(accelerator.device, **cast)
        self.scheduler = training_scheduler(config.objective.prediction_type)
        self.dropout = STAGE_DROPOUT[self.name]
        self.latent_shape = (4, *(side // 8 for side in self._canvas_size()))
        self.device = accelerator.device
        self.requests = validation_requests(self.data, config) if self.main and config.validation.num_requests else []

    def _canvas_size(self) -> tuple[int, int]:
        from imagpose.canvas import GridLayout

        dataset = self.dataset
        return GridLayout(*dataset.grid, *dataset.tile_size, dataset.pad_multiple, 8).canvas_size

    def batches(self, start_step: int, settings: StageConfig, process_index: int, num_processes: int):
        self.rows, self.global_rows, loader = process_batches(self.dataset, start_step, settings, process_index,
                                                              num_processes, self.config.data.num_workers)
        return loader

    def loss(self, model, batch: dict, step: int, micro: int, accelerator) -> tuple[torch.Tensor, int]:
        config = self.config
        generator = seeded_generator(config.seed, STAGES.index(self.name), step, micro)
        draws = draw_objective(generator, self.global_rows, self.latent_shape, self.dropout,
                               config.objective.noise_offset).rows(self.rows.start, self.rows.stop)
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        loss, _ = training_loss(model, self.vae, self.image_encoder, self.scheduler, batch, draws.to(self.device),
                                config.objective.snr_gamma)
        return loss, self.rows.stop - self.rows.start

    def _pipeline(self, trained):
        """The trained networks with the frozen encoders as an inference pipeline (CPU copies)."""
        import copy

        from imagpose.pipeline import IMAGPosePipeline
        from imagpose.schedulers import official_ddim_scheduler

        return IMAGPosePipeline(unet=trained.unet, vae=copy.deepcopy(self.models.vae).to("cpu", torch.float32),
                                image_encoder=copy.deepcopy(self.models.image_encoder).to("cpu", torch.float32),
                                flc_tokenizer=trained.flc_tokenizer, pose_guider=trained.pose_guider,
                                scheduler=official_ddim_scheduler(self.config.inference_beta_schedule))

    def validate(self, out: Path, step: int, trained) -> None:
        if self.requests:
            write_validation_grid(out, step, self._pipeline(trained), self.requests, self.config)

    def finish(self, out: Path, trained) -> Path:
        with OutputFolder(out) as folder:  # staged, then moved into place: a kill mid-write leaves no pipeline/
            self._pipeline(trained).save_pretrained(folder.path("pipeline"))
        return out / "pipeline"


def run_stage(config: TrainConfig, stage: str, data: str | Path, out: str | Path, *,
              init_from: str | Path | None = None, resume: bool = False, stop_after: int | None = None,
              progress: bool = True) -> TrainingResult:
    """Train one stage; write checkpoints, logs, validation grids and the final pipeline folder into ``out``.

    ``init_from``: the previous stage's pipeline folder (stage2, end2end). ``resume``: continue from the latest
    checkpoint in ``out/checkpoints`` (a fresh start when there is none). ``stop_after``: stop after that step with
    a checkpoint and no pipeline folder, as an interrupted run would; the schedule is still the one of ``steps``.
    The result's ``product`` is ``out/pipeline``.
    """
    task = StageTask(config, stage, data, init_from)
    return train(task, run_settings(config), task.settings, out, resume=resume, stop_after=stop_after,
                 progress=progress)


def run_all(config: TrainConfig, data: str | Path, out: str | Path, *, resume: bool = False,
            progress: bool = True) -> list[TrainingResult]:
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
            results.append(TrainingResult(stage, stage_out / "pipeline", config.stage(stage).steps, 0.0, 0.0,
                                          read_log(stage_out / "log.csv", 10**12)[-1]["loss"], stage_out / "log.csv"))
        else:
            results.append(run_stage(config, stage, data, stage_out, init_from=init_from, resume=resume,
                                     progress=progress))
        init_from = results[-1].product
    return results


def _finished(stage_out: Path, config: TrainConfig, stage: str) -> bool:
    rows = read_log(stage_out / "log.csv", 10**12)
    return bool(rows) and rows[-1]["step"] >= config.stage(stage).steps
