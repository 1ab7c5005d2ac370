"""Train the preset's autoencoder (``AutoencoderKL`` or the TAESD-style ``AutoencoderTiny``) on the generated
people, on the shared training loop (:mod:`imagpose.train.loop`: checkpoints, exact resume, trackers), and report
how faithfully it reproduces held-out people.

    from imagpose.train.vae import train_vae
    folder = train_vae("data/", "runs/vae")   # the autoencoder folder (config.json + safetensors), recon.png,
                                              # recon_canvas.png, vae_report.json, vae_curve.json, log.csv, loss.png

Objective: SD's autoencoder loss (LDM ``LPIPSWithDiscriminator``) without its perceptual and adversarial terms:
the L1 (or MSE) reconstruction, plus for AutoencoderKL ``kl_weight`` (1e-6, as SD) times KL(q(z|x) || N(0, I))
of a posterior sample (the Tiny design has deterministic latents and no KL term, as TAESD). The perceptual term
(LPIPS) needs pretrained VGG/AlexNet weights, which cannot be downloaded here, so reconstructions are smoother than
SD's at the same PSNR.

Data (:mod:`imagpose.train.vae_data`): tiles and 2x2 canvases of the train split, as the pipeline encodes and
decodes them; item ``(step, slot)`` is a function of ``(seed, step, slot)`` alone, so a resumed run and N processes
see what one uninterrupted process does. Measures: :mod:`imagpose.train.vae_measures`.

Latent scale: the pipeline's latents should have unit std, the property SD's 0.18215 gives SD's VAE. After
training, AutoencoderKL's latent space is rescaled exactly (quant_conv scaled by s, post_quant_conv by 1 / s:
reconstructions are unchanged) because the official pipeline hard-codes 0.18215 when encoding. AutoencoderTiny is
normalised per channel (``latents_mean`` / ``latents_std`` in its config, read by encode and decode): its
channels' means differ by several of their stds (measured: means -0.81, 0.24, 1.61, -0.53 against stds 0.33-0.52
under one global factor), so a global factor would leave each channel's content well under unit std.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
from torch import nn

from imagpose import autoencoders
from imagpose.errors import InvalidArgumentError
from imagpose.io import OutputFolder
from imagpose.presets import get_preset

from .config import AutoencoderConfig, OptimizerConfig, StageConfig
from .loop import RunSettings, TrainingResult, train
from .training_log import read_log
from .vae_data import AutoencoderItems, AutoencoderSteps, check_image_size, collate, held_out_sets, read_split_images
from .vae_measures import (
    calibrate_latent_channels,
    calibrate_latent_scale,
    colour_round_trip_errors,
    held_out_people,
    latent_std,
    psnr,
    recon_strip,
)


class AutoencoderTrainingModel(nn.Module):
    """The autoencoder as the one module accelerate wraps: ``forward`` is one training round trip."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor, noise: torch.Tensor | None = None):
        """pixels (B, 3, H, W) in [-1, 1] -> (reconstruction, KL summed over latent elements and the batch; 0 for
        the deterministic Tiny design). ``noise``: the posterior's N(0, I) draw (KL)."""
        if autoencoders.is_tiny(self.vae):
            latents = self.vae.encode(pixels).latents
            return self.vae.decode(latents).sample, pixels.new_zeros(())
        posterior = self.vae.encode(pixels).latent_dist
        latents = posterior.mean + posterior.std * noise.to(posterior.mean.dtype)
        return self.vae.decode(latents).sample, posterior.kl().sum()


def design(preset, settings: AutoencoderConfig) -> dict:
    """The preset's autoencoder config with the widths and encoder depth ``settings`` sets (AutoencoderTiny only):
    every level ``channels`` wide, the encoder's ``encoder_channels`` wide, ``encoder_blocks`` residual blocks per
    encoder level."""
    config = dict(preset.vae)
    changes = {name: getattr(settings, name) for name in ("channels", "encoder_channels", "encoder_blocks")
               if getattr(settings, name) is not None}
    if not changes:
        return config
    if preset.vae_class != "AutoencoderTiny":
        raise InvalidArgumentError(f"autoencoder.{next(iter(changes))} shapes an AutoencoderTiny; the {preset.name!r} "
                                   f"preset's autoencoder is an {preset.vae_class} (leave it unset).")
    levels = len(config["encoder_block_out_channels"])
    if "channels" in changes:
        config |= {"encoder_block_out_channels": [settings.channels] * levels,
                   "decoder_block_out_channels": [settings.channels] * levels}
    if "encoder_channels" in changes:
        config |= {"encoder_block_out_channels": [settings.encoder_channels] * levels}
    if "encoder_blocks" in changes:
        if len(settings.encoder_blocks) != levels:
            raise InvalidArgumentError(f"autoencoder.encoder_blocks needs one block count per encoder level "
                                       f"({levels}), got {list(settings.encoder_blocks)}.")
        config |= {"num_encoder_blocks": list(settings.encoder_blocks)}
    return config


def initialise_for_training(vae) -> None:
    """Start a from-scratch AutoencoderTiny where its input reaches its output: Kaiming-normal convolutions (ReLU
    gain, zero biases) and residual branches whose last convolution is zero, so every block starts as the identity
    (as Fixup / zero-init residual networks). With PyTorch's default initialisation the norm-free design shrinks
    the image-dependent signal about 2x per layer (35x by the latents) and trains for hundreds of steps to grey
    images first (docs/training.md). AutoencoderKL keeps diffusers' initialisation: its GroupNorms rescale the
    signal at every block."""
    if not autoencoders.is_tiny(vae):
        return
    from diffusers.models.unets.unet_2d_blocks import AutoencoderTinyBlock

    with torch.no_grad():
        for module in vae.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for module in vae.modules():
            if isinstance(module, AutoencoderTinyBlock):
                nn.init.zeros_(module.conv[-1].weight)


class AutoencoderTask:
    """The autoencoder on the shared loop; the product is the autoencoder folder itself (``out``)."""

    name = "vae"

    def __init__(self, data_root: str | Path, preset: str, seed: int, settings: AutoencoderConfig,
                 decoder_of: str | Path | None = None):
        """``decoder_of``: a trained autoencoder folder whose decoder alone is trained (its encoder and latent scale
        are kept); None: the preset's autoencoder from scratch."""
        self.root, self.preset, self.seed, self.settings = Path(data_root), get_preset(preset), seed, settings
        self.decoder_only = decoder_of is not None
        self.test = read_split_images(self.root, "test")  # the smaller split first: a missing one fails now
        self.train = read_split_images(self.root, "train")
        self.held_out = held_out_sets(self.test)
        if self.decoder_only:
            vae = autoencoders.load_autoencoder(decoder_of)
            for module in _encoder_side(vae):
                module.requires_grad_(False)
            self.name = "vae_decoder"
        else:
            with torch.random.fork_rng(devices=[]):  # the initial weights depend on ``seed`` only
                torch.manual_seed(seed)
                config = design(self.preset, settings)
                vae = autoencoders.build_autoencoder(self.preset.vae_class, config)
                initialise_for_training(vae)
        autoencoders.check_colour_capacity(vae, f"The {preset!r} preset's {self.preset.vae_class}")
        check_image_size(tuple(self.train[0].shape[-2:]), vae, self.root)
        self.model = AutoencoderTrainingModel(vae)

    def setup(self, accelerator, out: Path, start_step: int) -> None:
        self.device = accelerator.device
        # the held-out curve of a resumed run keeps its points up to the checkpoint
        self.curve = [p for p in _read_curve(out) if p["step"] <= start_step] if start_step else []

    def batches(self, start_step: int, settings: StageConfig, process_index: int, num_processes: int):
        vae = self.model.vae
        items = AutoencoderItems(self.train, self.seed, self.settings.canvas_fraction,
                                 latent_noise=not autoencoders.is_tiny(vae),
                                 downscale=autoencoders.downscale_factor(vae),
                                 colour_permutation=self.settings.colour_permutation,
                                 colour_fields=self.settings.colour_fields if self.decoder_only else 0.0)
        sampler = AutoencoderSteps(start_step, settings, process_index, num_processes, self.seed,
                                   self.settings.canvas_fraction)
        return torch.utils.data.DataLoader(items, batch_sampler=sampler, collate_fn=collate)

    def loss(self, model, batch: dict, step: int, micro: int, accelerator) -> tuple[torch.Tensor, int]:
        pixels = batch["pixels"].to(self.device)
        noise = batch["noise"].to(self.device) if "noise" in batch else None
        reconstruction, kl = model(pixels, noise)
        error = reconstruction - pixels
        error = error.abs() if self.settings.loss == "l1" else error.pow(2)
        # SD's sums over pixels and latent elements, normalised by one constant (the input's element count)
        return (error.sum() + self.settings.kl_weight * kl) / pixels.numel(), len(pixels)

    def validate(self, out: Path, step: int, trained) -> None:
        point = {"step": step, **{f"psnr_{name}": round(psnr(trained.vae, images), 2)
                                  for name, images in self.held_out.items()}}
        self.curve = [p for p in self.curve if p["step"] < step] + [point]
        with OutputFolder(out) as folder:
            folder.write_json("vae_curve.json", self.curve)

    def finish(self, out: Path, trained) -> Path:
        vae = trained.vae
        training_images = torch.cat(self.train)
        std_before = factor = train_std = channels = None
        if not self.decoder_only:  # (the decoder phase keeps the trained autoencoder's encoder and calibration)
            std_before = round(latent_std(vae, training_images), 4)
            if autoencoders.is_tiny(vae):
                channels = dict(zip(("mean", "std"), calibrate_latent_channels(vae, training_images)))
            else:
                factor = round(calibrate_latent_scale(vae, training_images), 4)
            train_std = round(latent_std(vae, training_images), 4)
        rows = read_log(out / "log.csv", 10**12)
        report = {
            "class": type(vae).__name__,
            "parameters": sum(p.numel() for p in vae.parameters()),
            "psnr": {name: round(psnr(vae, images), 2) for name, images in self.held_out.items()},
            "held_out_counts": {name: len(images) for name, images in self.held_out.items()},
            "held_out_people": held_out_people(vae, self.root),
            "colour_round_trip": colour_round_trip_errors(vae, tuple(training_images.shape[-2:])),
            "latent_std": {
                "before_calibration": std_before,
                "calibration_factor": factor,
                "channels_before_calibration": channels,
                "train": train_std,
                "held_out": round(latent_std(vae, self.held_out["tiles"]), 4),
                "held_out_canvas": round(latent_std(vae, self.held_out["canvas"]), 4),
                "held_out_masked_canvas": round(latent_std(vae, self.held_out["masked_canvas"]), 4),
            },
            "curve": self.curve,
            "seconds": round(rows[-1]["seconds"], 1) if rows else None,
            "threads": torch.get_num_threads(),
            "decoder_only": self.decoder_only,
            "settings": {"steps": rows[-1]["step"] if rows else None, "seed": self.seed, "preset": self.preset.name,
                         **dataclasses.asdict(self.settings), "train_images": len(training_images),
                         "image_size": list(training_images.shape[-2:])},
        }
        with OutputFolder(out) as folder:
            vae.save_pretrained(folder.path())
            folder.save_image("recon.png", recon_strip(vae, self.held_out["tiles"][:8]))
            folder.save_image("recon_canvas.png", recon_strip(vae, self.held_out["canvas"][:1]))
            folder.write_json("vae_report.json", report)
        return out


def _encoder_side(vae) -> list[nn.Module]:
    """The modules that make the latents: freezing them keeps the latent space a denoiser was trained on."""
    return [vae.encoder] + ([vae.quant_conv] if getattr(vae, "quant_conv", None) is not None else [])


def _read_curve(out: Path) -> list[dict]:
    path = out / "vae_curve.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []


def train_vae(data_root: str | Path, out_dir: str | Path, config: AutoencoderConfig | None = None, *, seed: int = 0,
              preset: str = "tiny", trackers: tuple[str, ...] = (), resume: bool = False,
              stop_after: int | None = None, progress: bool = True, **settings) -> TrainingResult:
    """Train the ``preset``'s autoencoder from scratch on ``data_root``'s train split into ``out_dir``.

    ``config`` (default :class:`~imagpose.train.config.AutoencoderConfig`), with any of its fields overridden by
    keyword (``steps=3``). Writes into ``out_dir`` (beside what is there; see :class:`imagpose.io.OutputFolder`):
    the diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, loadable with
    :func:`imagpose.autoencoders.load_autoencoder`), ``recon.png`` (held-out tiles: originals over
    reconstructions), ``recon_canvas.png``, ``vae_report.json`` (PSNR per held-out set, held-out people's round
    trip, colour probes, latent std, time, settings), ``vae_curve.json`` (held-out PSNR every ``eval_every``
    steps), ``log.csv`` / ``loss.png`` and ``checkpoints/``. AdamW with 1% warm-up and cosine decay.
    ``resume`` / ``stop_after``: as :func:`imagpose.train.loop.train`.
    """
    config = dataclasses.replace(config or AutoencoderConfig(), **settings)  # validated as any config
    return _train(AutoencoderTask, data_root, out_dir, config, config.steps, config.learning_rate, seed, preset,
                  trackers, resume, stop_after, progress)


def train_decoder(data_root: str | Path, vae_dir: str | Path, out_dir: str | Path,
                  config: AutoencoderConfig | None = None, *, seed: int = 0, preset: str = "tiny",
                  trackers: tuple[str, ...] = (), resume: bool = False, stop_after: int | None = None,
                  progress: bool = True, **settings) -> TrainingResult:
    """Train the decoder of the autoencoder in ``vae_dir`` for ``config.decoder_steps`` steps at
    ``config.decoder_learning_rate``, its encoder and latent
    scale frozen (a denoiser trained on its latents stays valid), on ``data_root``'s train split with a fraction
    ``config.colour_fields`` of flat colour fields; writes as :func:`train_vae` into ``out_dir``."""
    config = dataclasses.replace(config or AutoencoderConfig(), **settings)
    if config.decoder_steps < 1:
        raise InvalidArgumentError("decoder_steps must be at least 1 to train the decoder.")

    def task(root, preset_name, task_seed, task_config):
        return AutoencoderTask(root, preset_name, task_seed, task_config, decoder_of=vae_dir)

    return _train(task, data_root, out_dir, config, config.decoder_steps, config.decoder_learning_rate, seed, preset,
                  trackers, resume, stop_after, progress)


def _train(make_task, data_root, out_dir, config: AutoencoderConfig, steps: int, learning_rate: float, seed: int,
           preset: str, trackers, resume: bool, stop_after: int | None, progress: bool) -> TrainingResult:
    with OutputFolder(out_dir):  # an unwritable location fails first; a folder made for a failed run is removed
        task = make_task(data_root, preset, seed, config)
    optimizer = OptimizerConfig(lr_scheduler="cosine", warmup_steps=max(1, steps // 100), max_grad_norm=math.inf)
    record = {"task": task.name, "data": str(data_root), "seed": seed, "preset": preset,
              **dataclasses.asdict(config)}
    run = RunSettings(seed=seed, optimizer=optimizer, trackers=tuple(trackers), record=record)
    stage = StageConfig(steps=steps, batch_size=config.batch_size, learning_rate=learning_rate,
                        checkpoint_every=config.checkpoint_every, keep_checkpoints=2,
                        validate_every=config.eval_every, log_every=1)
    return train(task, run, stage, out_dir, resume=resume, stop_after=stop_after, progress=progress)
