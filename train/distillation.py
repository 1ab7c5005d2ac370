"""Latent consistency distillation (LCM, Luo et al. 2023) of a trained IMAGPose pipeline into a few-step student.

The variant (diffusers' ``train_lcm_distill_sd_wds.py`` and the LCM paper, without the guidance embedding): the
student is the teacher's whole UNet, copied and trained (no LoRA: the tiny UNet has 1.5 M parameters, and a full
copy keeps the UNet's input/output contract, so the student drops into every export and serving path); the pose
guider, the FLC tokenizer and the encoders are the teacher's, frozen, and encode each batch's conditions once for
the teacher, the target and the student. The teacher's classifier-free guidance (w fixed, ``teacher_guidance``) is
folded into the target, so the student samples with one UNet batch per step. For a batch (z_0 (B, 4, h, w) the
target canvas' latents, c its conditions, abar the teacher's noise schedule):

    k = 1000 / ddim_timesteps                n ~ U{0, ..., ddim_timesteps - 1}     (skipping step: 20 for 50)
    t_n = (n + 1) k - 1,  s = max(t_n - k, 0)                       (the teacher's DDIM steps, trailing: 999 ... 19)
    x_{t_n} = sqrt(abar_{t_n}) z_0 + sqrt(1 - abar_{t_n}) eps                               eps ~ N(0, I)
    teacher:  v = v(x, t_n, 0) + w (v(x, t_n, c) - v(x, t_n, 0))     (the official null condition: zero context)
              x_0 = sqrt(abar) x - sqrt(1 - abar) v,  eps_hat = sqrt(1 - abar) x + sqrt(abar) v     (v-prediction)
              x_s = sqrt(abar_s) x_0 + sqrt(1 - abar_s) eps_hat                             (one DDIM step to s)
    f(x, t) = c_skip(t) x + c_out(t) x_0(UNet(x, t, c))      (LCMScheduler's boundary conditions: f(x, 0) = x)
    loss = mean d(f_student(x_{t_n}, t_n), f_target(x_s, s))   d: pseudo-Huber sqrt(r^2 + c^2) - c, or r^2
    target = EMA of the student (decay ``target_ema_decay``), no gradient; it starts as the teacher

The target network lives in the trained module (frozen parameters), so accelerate's checkpoints carry it and a
resumed run continues exactly: it moves toward the student at the first micro-batch of every step after the first.
The product is a pipeline folder: the teacher's components with the student UNet, an ``LCMScheduler`` on the
teacher's noise schedule (``original_inference_steps`` = ``ddim_timesteps``), and ``sampling.json`` recording the
few-step defaults (sampler lcm, ``student_steps`` steps, no guidance) and how the student was made.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from imagpose.autoencoders import downscale_factor
from imagpose.canvas import GridLayout, pad_multiple_for
from imagpose.errors import InvalidArgumentError
from imagpose.io import OutputFolder

from .config import DISTILL_STAGE, TrainConfig
from .data import TrainingDataset, check_dataset, process_batches, seeded_generator
from .loop import TrainingResult, train
from .objective import NUM_ENCODED, encode_canvases
from .stage_training import run_settings
from .validation import validation_requests, write_validation_grid

DRAW_STREAM = 3  # the distillation's stream of seeded generators (the stages use 0, 1, 2)


class ConsistencyModel(nn.Module):
    """The student UNet (trained) and its target network (an EMA of the student, frozen): the module accelerate
    wraps, so checkpoints carry both."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = copy.deepcopy(unet).requires_grad_(True).train()
        self.target_unet = copy.deepcopy(unet).requires_grad_(False).eval()

    def forward(self, sample, timesteps, context, pose_features, grid):
        """The student's prediction (B, 4, h, w) for sample (B, 9, h, w) at timesteps (B,)."""
        return self.unet(sample, timesteps, context, pose_features, grid=tuple(grid), return_dict=False)[0]

    @torch.no_grad()
    def update_target(self, decay: float) -> None:
        """target <- decay * target + (1 - decay) * student."""
        for target, student in zip(self.target_unet.parameters(), self.unet.parameters()):
            target.lerp_(student.detach(), 1.0 - decay)


def solver_timesteps(ddim_timesteps: int, num_train_timesteps: int = 1000) -> torch.Tensor:
    """(ddim_timesteps,) the teacher's DDIM steps t_n = (n + 1) k - 1, k = num_train_timesteps / ddim_timesteps
    (LCMScheduler's ``lcm_origin_timesteps``, and the trailing spacing of the teacher's own DDIM)."""
    k = num_train_timesteps // ddim_timesteps
    return torch.arange(1, ddim_timesteps + 1) * k - 1


def predicted_original_and_noise(prediction: torch.Tensor, sample: torch.Tensor, alpha_bar: torch.Tensor,
                                 prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_0, eps) implied by a UNet ``prediction`` at x_t = ``sample``; ``alpha_bar`` (B,) at each row's t."""
    a = alpha_bar.view(-1, 1, 1, 1).to(sample.dtype)
    if prediction_type == "v_prediction":
        return a.sqrt() * sample - (1 - a).sqrt() * prediction, (1 - a).sqrt() * sample + a.sqrt() * prediction
    if prediction_type == "epsilon":  # x_0 = (x - sqrt(1 - a) eps) / sqrt(a): undefined at zero terminal SNR
        return (sample - (1 - a).sqrt() * prediction) / a.sqrt().clamp(min=1e-6), prediction
    raise InvalidArgumentError(f"Consistency distillation supports v_prediction and epsilon teachers, not "
                               f"{prediction_type!r}.")


def consistency_distance(prediction: torch.Tensor, target: torch.Tensor, loss: str, huber_c: float) -> torch.Tensor:
    """Mean pseudo-Huber (sqrt(r^2 + c^2) - c) or squared distance, in float32."""
    squared = (prediction.float() - target.float()).pow(2)
    if loss == "huber":
        return (squared + huber_c**2).sqrt().sub(huber_c).mean()
    return squared.mean()


class DistillationTask:
    """Consistency distillation of the pipeline folder ``teacher`` on the trainer's dataset (see the module
    docstring); a task of the shared training loop."""

    name = DISTILL_STAGE

    def __init__(self, config: TrainConfig, teacher: str | Path, data: str | Path, command: str | None = None):
        from diffusers import LCMScheduler

        from imagpose.pipeline import IMAGPosePipeline

        self.config, self.data, self.method, self.command = config, Path(data), config.distillation, command
        self.settings = config.stage(DISTILL_STAGE)
        self.teacher_folder = Path(teacher)
        self.teacher = IMAGPosePipeline.from_pretrained(teacher)
        if self.teacher.distillation is not None:
            raise InvalidArgumentError(f"{teacher} is already a distilled student; distil its teacher instead.")
        for module in (self.teacher.unet, self.teacher.vae, self.teacher.image_encoder, self.teacher.flc_tokenizer,
                       self.teacher.pose_guider):
            module.requires_grad_(False).eval()
        self.model = ConsistencyModel(self.teacher.unet)
        self.boundary = LCMScheduler.from_config(self.teacher.scheduler.config,
                                                 original_inference_steps=self.method.ddim_timesteps)
        self.alphas_cumprod = self.teacher.scheduler.alphas_cumprod.float()
        self.timesteps = solver_timesteps(self.method.ddim_timesteps,
                                          self.teacher.scheduler.config.num_train_timesteps)
        self.skip = int(self.timesteps[0]) + 1  # k

    # ------------------------------------------------------------------ the loop's hooks
    def setup(self, accelerator, out: Path, start_step: int) -> None:
        import yaml

        config = self.config
        report = check_dataset(self.data, "train")
        self.main = accelerator.is_main_process
        if self.main:
            with OutputFolder(out) as folder:
                folder.path("config.yaml").write_text(yaml.safe_dump(
                    {**config.to_dict(), "teacher": str(self.teacher_folder)}, sort_keys=False))
                folder.path("data_check.txt").write_text(report.summary(limit=10**6) + "\n")
            accelerator.print(report.summary())
        unet = self.teacher.unet
        pad_multiple = pad_multiple_for(downscale_factor(self.teacher.vae), len(unet.config.block_out_channels))
        patch = self.teacher.flc_tokenizer.config.patch_size
        self.dataset = TrainingDataset(report, config.tile_size(DISTILL_STAGE), config.data.grid, seed=config.seed,
                                       min_targets=config.data.min_targets, max_targets=config.data.max_targets,
                                       max_scale=config.data.max_scale, flip=config.data.flip,
                                       pad_multiple=pad_multiple, flc_patch_size=patch)
        layout = GridLayout(*self.dataset.grid, *self.dataset.tile_size, pad_multiple, 8)
        self.latent_shape = (unet.config.out_channels, *(side // 8 for side in layout.canvas_size))
        self.device = accelerator.device
        for name in ("unet", "vae", "image_encoder", "flc_tokenizer", "pose_guider"):
            getattr(self.teacher, name).to(self.device)
        self.alphas_cumprod = self.alphas_cumprod.to(self.device)
        self.timesteps = self.timesteps.to(self.device)  # indexed by every step's draws
        self.requests = validation_requests(self.data, config) if self.main and config.validation.num_requests else []

    def batches(self, start_step: int, settings, process_index: int, num_processes: int):
        self.rows, self.global_rows, loader = process_batches(self.dataset, start_step, settings, process_index,
                                                              num_processes, self.config.data.num_workers)
        return loader

    def loss(self, model, batch: dict, step: int, micro: int, accelerator) -> tuple[torch.Tensor, int]:
        method = self.method
        consistency = accelerator.unwrap_model(model)
        if micro == 0 and step > 0:  # the optimizer stepped since the target last moved (see the module docstring)
            consistency.update_target(method.target_ema_decay)
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        draws = self._draws(step, micro)
        with torch.no_grad():
            latents, context, image_condition, pose_features = self._conditions(batch, draws["vae_noise"])
            start = self.timesteps[draws["index"]]  # t_n
            end = (start - self.skip).clamp(min=0)  # s = max(t_n - k, 0)
            noisy = self.teacher.scheduler.add_noise(latents, draws["noise"], start)
            previous = self._teacher_step(noisy, start, end, context, image_condition, pose_features, batch["grid"])
            target_prediction = consistency.target_unet(torch.cat([previous, image_condition], dim=1), end, context,
                                                        pose_features, grid=tuple(batch["grid"]),
                                                        return_dict=False)[0]
            target = self._consistency_output(target_prediction.float(), previous, end)
        prediction = model(torch.cat([noisy, image_condition], dim=1), start, context, pose_features, batch["grid"])
        student = self._consistency_output(prediction.float(), noisy, start)
        return consistency_distance(student, target, method.loss, method.huber_c), self.rows.stop - self.rows.start

    def validate(self, out: Path, step: int, trained) -> None:
        if self.requests:
            pipe = self._pipeline(trained)
            write_validation_grid(out, step, pipe, self.requests, self.config, sampling=pipe.default_sampling)

    def finish(self, out: Path, trained) -> Path:
        from imagpose.pretrained import TRAINING_RECORD, training_record

        pipe = self._pipeline(trained)
        teacher = training_record(self.teacher_folder) or {}
        record = {"tile_size": list(self.config.tile_size(DISTILL_STAGE)), "grid": list(self.config.data.grid),
                  "command": self.command, "teacher": {"folder": self.teacher_folder.name,
                                                       "command": teacher.get("command")},
                  "distillation": pipe.distillation, "config": self.config.to_dict()}
        with OutputFolder(out) as folder:  # staged, then moved into place: a kill mid-write leaves no pipeline/
            pipe.save_pretrained(folder.path("pipeline"))
            folder.write_json(f"pipeline/{TRAINING_RECORD}", record)
        return out / "pipeline"

    # ------------------------------------------------------------------ one step's parts
    def _draws(self, step: int, micro: int) -> dict:
        """The step's random numbers for the global batch (every process takes its rows): solver indices n, the
        noise eps and the autoencoder's posterior samples."""
        generator = seeded_generator(self.config.seed, DRAW_STREAM, step, micro)
        rows, shape = self.global_rows, self.latent_shape
        draws = {"index": torch.randint(0, len(self.timesteps), (rows,), generator=generator),
                 "noise": torch.randn((rows, *shape), generator=generator),
                 "vae_noise": torch.randn((NUM_ENCODED, rows, *shape), generator=generator)}
        mine = {name: tensor[:, self.rows] if name == "vae_noise" else tensor[self.rows]
                for name, tensor in draws.items()}
        return {name: tensor.to(self.device) for name, tensor in mine.items()}

    def _conditions(self, batch: dict, vae_noise: torch.Tensor):
        """(z_0, context F_C (B, 257 + N, D), image condition cat[flag, masked latent] (B, 5, h, w), pose features
        F_P) of a batch, with the teacher's frozen encoders and condition networks (no condition dropout)."""
        teacher = self.teacher
        dtype = next(teacher.vae.parameters()).dtype
        latents, masked_latents, reference_latents = encode_canvases(teacher.vae, batch, vae_noise)
        dino_tokens = teacher.image_encoder(batch["dino_pixels"].to(dtype)).last_hidden_state
        context = torch.cat([dino_tokens, teacher.flc_tokenizer(reference_latents)], dim=1)
        image_condition = torch.cat([batch["flag"].float(), masked_latents], dim=1)
        return latents, context, image_condition, teacher.pose_guider(batch["pose"])

    def _teacher_step(self, noisy, start, end, context, image_condition, pose_features, grid) -> torch.Tensor:
        """x_s: one DDIM step of the guided teacher from x_{t_n} (rows [uncond, cond], the official null
        condition: zero context)."""
        rows = len(noisy)
        guided = self.method.teacher_guidance > 1.0
        sample = torch.cat([noisy, image_condition], dim=1)
        if guided:
            sample, timesteps = sample.repeat(2, 1, 1, 1), start.repeat(2)
            context = torch.cat([torch.zeros_like(context), context])
            pose_features = pose_features.repeat(2, 1, 1, 1)
        else:
            timesteps = start
        prediction = self.teacher.unet(sample, timesteps, context, pose_features, grid=tuple(grid),
                                       return_dict=False)[0].float()
        if guided:  # u + w (c - u)
            uncond, cond = prediction[:rows], prediction[rows:]
            prediction = uncond + self.method.teacher_guidance * (cond - uncond)
        prediction_type = self.teacher.scheduler.config.prediction_type
        original, noise = predicted_original_and_noise(prediction, noisy, self.alphas_cumprod[start], prediction_type)
        a_end = self.alphas_cumprod[end].view(-1, 1, 1, 1)
        return a_end.sqrt() * original + (1 - a_end).sqrt() * noise

    def _consistency_output(self, prediction, sample, timesteps) -> torch.Tensor:
        """f(x, t) = c_skip(t) x + c_out(t) x_0 (LCMScheduler's boundary conditions)."""
        c_skip, c_out = self.boundary.get_scalings_for_boundary_condition_discrete(timesteps.float())
        original, _ = predicted_original_and_noise(prediction, sample, self.alphas_cumprod[timesteps],
                                                   self.teacher.scheduler.config.prediction_type)
        return c_skip.view(-1, 1, 1, 1) * sample + c_out.view(-1, 1, 1, 1) * original

    def _pipeline(self, trained):
        """The student as a pipeline: the teacher's components (CPU copies) with the trained UNet, the lcm
        sampler and the few-step defaults."""
        from imagpose.pipeline import IMAGPosePipeline
        from imagpose.sampling_config import SamplingConfig

        teacher = self.teacher
        pipe = IMAGPosePipeline(unet=trained.unet, scheduler=self.boundary, **{
            name: copy.deepcopy(getattr(teacher, name)).to("cpu")
            for name in ("vae", "image_encoder", "flc_tokenizer", "pose_guider")})
        method = self.method
        pipe.default_sampling = SamplingConfig(num_inference_steps=method.student_steps, guidance_scale=1.0,
                                               sampler="lcm")
        pipe.distillation = {"method": "latent consistency distillation (LCM), whole UNet",
                             "teacher": self.teacher_folder.name, "steps": self.settings.steps,
                             "batch_size": self.settings.batch_size, "learning_rate": self.settings.learning_rate,
                             "teacher_guidance": method.teacher_guidance, "ddim_timesteps": method.ddim_timesteps,
                             "loss": method.loss, "huber_c": method.huber_c,
                             "target_ema_decay": method.target_ema_decay, "student_steps": method.student_steps}
        return pipe


def run_distillation(config: TrainConfig, teacher: str | Path, data: str | Path, out: str | Path, *,
                     resume: bool = False, stop_after: int | None = None, progress: bool = True,
                     command: str | None = None) -> TrainingResult:
    """Distil the pipeline folder ``teacher`` into a few-step student in ``out`` (checkpoints, log.csv, loss.png,
    validation grids of the student at its default steps, and ``out/pipeline`` with its ``training.json``, which
    records ``command``); ``resume`` and ``stop_after`` as for the stages."""
    task = DistillationTask(config, teacher, data, command)
    return train(task, run_settings(config), task.settings, out, resume=resume, stop_after=stop_after,
                 progress=progress)
