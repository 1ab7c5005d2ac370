"""Typed training configs (dataclasses), loaded from YAML: ``train/presets/<name>.yaml`` or any YAML file.

A YAML file validates into :class:`TrainConfig`: every key must be a field (an unknown key is an error that names
it, e.g. ``stages.stage1.learing_rate``), every value must have the field's type, and missing keys take the
defaults below, which are the official ones (``configs/train_stage{1,2}.yaml``, ``train_end2end.yaml``). The
architecture is an imagpose model preset (``model: tiny | sd15``); run-level knobs (data, output folder, which
stage) stay on the command line.

    config = load_config("tiny")                                  # train/presets/tiny.yaml
    config = load_config("my_run.yaml", overrides=["stages.stage1.steps=100"])

Why a small walker (:func:`_convert`) and not OmegaConf's structured configs: OmegaConf 2.4 reads these dataclasses
and its unknown-key and type messages are as good ("Key 'stpes' not in 'StageConfig'. Did you mean: 'steps'?"), but
two kinds lose the key: a list of the wrong length ("TupleConfig length 1 does not match type hint length 2", no
``data.tile_size``) and every range check of a ``__post_init__`` ("betas must be two numbers in [0, 1)", no
``optimizer.``), which is most of what users get wrong. The walker names the full key in every message.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from imagpose.errors import InputFileError, InvalidArgumentError
from imagpose.presets import PRESETS
from imagpose.sampling_config import SamplingConfig
from imagpose.schedulers import BETA_SCHEDULES
from imagpose.seeds import check_seed

STAGES = ("stage1", "stage2", "end2end")
DISTILL_STAGE = "distill"  # `imagpose train distill`: its run length in stages.distill, its method in distillation
DISTILLATION_LOSSES = ("huber", "l2")
PREDICTION_TYPES = ("v_prediction", "epsilon")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
TRACKERS = ("tensorboard", "mlflow", "wandb", "aim", "comet_ml", "clearml", "dvclive", "swanlab", "trackio")


@dataclass
class ObjectiveConfig:
    """The diffusion loss (``imagpose.train.objective``)."""

    prediction_type: str = "v_prediction"  # official; "epsilon" is the paper's Eq. 1/4
    snr_gamma: float = 5.0  # Min-SNR gamma; 0 turns the weighting off (plain MSE)
    noise_offset: float = 0.05  # scale of the per-(sample, channel) constant added to the noise

    def __post_init__(self):
        _choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        _at_least("snr_gamma", self.snr_gamma, 0.0)
        _at_least("noise_offset", self.noise_offset, 0.0)


@dataclass
class OptimizerConfig:
    """AdamW and its LR schedule, shared by the stages (the LR itself is per stage)."""

    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    eps: float = 1e-8
    # diffusers' get_scheduler; its "constant" ignores warmup_steps, so the official "constant" + 1 warmup step
    # is a constant LR from the first step
    lr_scheduler: str = "constant"
    warmup_steps: int = 1
    max_grad_norm: float = 1.0

    def __post_init__(self):
        _choice("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        _at_least("warmup_steps", self.warmup_steps, 0)
        _positive("max_grad_norm", self.max_grad_norm)
        if len(self.betas) != 2 or not all(0 <= beta < 1 for beta in self.betas):  # torch.optim.AdamW's ranges
            raise InvalidArgumentError(f"betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got "
                                       f"{list(self.betas)!r}.")
        if not 0 < self.eps < 1:
            raise InvalidArgumentError(f"eps must be a small positive number (AdamW's default 1e-8), got "
                                       f"{self.eps!r}.")
        if not 0 <= self.weight_decay < 1:
            raise InvalidArgumentError(f"weight_decay must be in [0, 1) (decoupled decay, as AdamW's 0.01), "
                                       f"got {self.weight_decay!r}.")


@dataclass
class DataConfig:
    """What the training dataset builds (``imagpose.train.data``)."""

    tile_size: tuple[int, int] = (64, 64)  # (height, width) of one view in pixels
    grid: tuple[int, int] = (2, 2)  # (rows, cols) of views on the canvas, as the official 2x2
    min_targets: int = 1  # hidden tiles per item: official 1..tiles-1 (uniform over the allowed patterns)
    max_targets: int | None = None  # None: tiles - 1
    max_scale: float = 1.0  # random zoom-crop of up to this factor (1: none, as the official same-size images)
    flip: bool = True  # random horizontal flip of the whole item (official)
    num_workers: int = 0  # DataLoader workers (items are functions of (seed, index): any count resumes exactly)

    def __post_init__(self):
        for name, pair in (("tile_size", self.tile_size), ("grid", self.grid)):
            if min(pair) < 1:
                raise InvalidArgumentError(f"{name} must hold two positive integers, got {list(pair)}.")
        _at_least("num_workers", self.num_workers, 0)
        _positive("min_targets", self.min_targets)
        _at_least("max_scale", self.max_scale, 1.0)


@dataclass
class WeightsConfig:
    """Local weight folders/files (never the hub). None: the preset's deterministic random weights."""

    pretrained_unet: str | None = None  # stage 1: an SD1.5-layout diffusers UNet folder (config.json + weights)
    vae: str | None = None  # an AutoencoderKL (sd-vae-ft-mse) or AutoencoderTiny folder (tiny: `imagpose train vae`)
    image_encoder: str | None = None  # a transformers DINOv2 folder (dinov2-base)
    motion_module: str | None = None  # stage 2: CVA init (.safetensors, or a .pth read with weights_only=True)


@dataclass
class ValidationConfig:
    """Image grids of the real pipeline on fixed held-out requests, written every ``validate_every`` steps."""

    num_requests: int = 4
    inference_steps: int = SamplingConfig.num_inference_steps
    guidance_scale: float = SamplingConfig.guidance_scale

    def __post_init__(self):
        _at_least("num_requests", self.num_requests, 0)
        _positive("inference_steps", self.inference_steps)
        _at_least("guidance_scale", self.guidance_scale, 0.0)


@dataclass
class AutoencoderConfig:
    """The autoencoder's own run before the stages (``imagpose train all``; ``imagpose train vae`` flags)."""

    steps: int = 2000
    batch_size: int = 16  # images per step; a canvas step holds batch_size / 4 2x2 canvases
    learning_rate: float = 5e-4
    loss: str = "l1"  # "l1" or "mse"
    kl_weight: float = 1e-6  # AutoencoderKL only (SD's)
    canvas_fraction: float = 0.25  # steps that train on 2x2 canvases instead of tiles
    colour_permutation: float = 0.5  # images whose RGB channels are put in another order (any colour)
    eval_every: int = 250  # steps between held-out PSNR measurements
    checkpoint_every: int = 250
    channels: int | None = None  # AutoencoderTiny: the channels of every level (None: the model preset's)
    # AutoencoderTiny: the encoder's channels when narrower than the decoder's (None: ``channels``); the stages run
    # the encoder on every training canvas, so its width sets their cost
    encoder_channels: int | None = None
    # AutoencoderTiny: residual blocks per encoder level (None: the preset's, diffusers' [1, 3, 3, 3]); most of the
    # encoder's cost is its full- and half-resolution blocks ([0, 1, 3, 3] costs 3.4x fewer FLOPs at 48 channels)
    encoder_blocks: tuple[int, ...] | None = None
    # After the stages: the decoder alone (encoder frozen, so the denoiser's latent space is kept, as Stability's
    # sd-vae-ft-mse fine-tuned SD's decoder), on images of which ``colour_fields`` are flat colour fields
    decoder_steps: int = 0
    decoder_learning_rate: float = 2e-4  # a fine-tune: at 1e-3 held-out people lost 0.75 dB (docs/training.md)
    colour_fields: float = 0.25

    def __post_init__(self):
        for name in ("channels", "encoder_channels"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        for name in ("steps", "eval_every", "checkpoint_every", "learning_rate", "decoder_learning_rate"):
            _positive(name, getattr(self, name))
        if self.encoder_blocks is not None:
            if not all(isinstance(count, int) and count >= 0 for count in self.encoder_blocks):
                raise InvalidArgumentError(f"encoder_blocks must be block counts (integers >= 0) per level, got "
                                           f"{self.encoder_blocks!r}.")
        if self.batch_size < 4 or self.batch_size % 4:
            raise InvalidArgumentError(f"batch_size must be a positive multiple of 4, got {self.batch_size!r}.")
        _choice("loss", self.loss, ("l1", "mse"))
        _at_least("kl_weight", self.kl_weight, 0.0)
        _at_least("decoder_steps", self.decoder_steps, 0)
        for name in ("canvas_fraction", "colour_permutation", "colour_fields"):
            if not 0 <= getattr(self, name) <= 1:
                raise InvalidArgumentError(f"{name} must be in [0, 1], got {getattr(self, name)!r}.")


@dataclass
class DistillationConfig:
    """Latent consistency distillation of a trained pipeline into a few-step student (``imagpose.train.distillation``;
    the defaults are those of the LCM paper and diffusers' ``train_lcm_distill_sd_wds.py``)."""

    teacher_guidance: float = SamplingConfig.guidance_scale  # w of the teacher's CFG folded into the target
    ddim_timesteps: int = 50  # the teacher's DDIM solver schedule: skipping step k = 1000 / ddim_timesteps
    loss: str = "huber"  # "huber" (pseudo-Huber, LCM) or "l2"
    huber_c: float = 1e-3
    target_ema_decay: float = 0.95  # EMA of the student's weights that makes the target; 0: the student itself
    student_steps: int = 4  # the sampling steps the student's pipeline folder records as its default

    def __post_init__(self):
        _at_least("teacher_guidance", self.teacher_guidance, 0.0)
        _positive("ddim_timesteps", self.ddim_timesteps)
        if 1000 % self.ddim_timesteps:
            raise InvalidArgumentError(f"ddim_timesteps must divide the 1000 training timesteps (e.g. 50, 25, 20), "
                                       f"got {self.ddim_timesteps!r}.")
        _choice("loss", self.loss, DISTILLATION_LOSSES)
        _positive("huber_c", self.huber_c)
        if not 0 <= self.target_ema_decay < 1:
            raise InvalidArgumentError(f"target_ema_decay must be in [0, 1) (LCM: 0.95), got "
                                       f"{self.target_ema_decay!r}.")
        _positive("student_steps", self.student_steps)
        if self.student_steps > self.ddim_timesteps:
            raise InvalidArgumentError(f"student_steps ({self.student_steps}) must be at most ddim_timesteps "
                                       f"({self.ddim_timesteps}): the student samples on the teacher's solver steps.")


@dataclass
class StageConfig:
    """One stage's run length, batch and learning rate, and how often it logs, checkpoints and validates."""

    steps: int  # optimizer steps
    batch_size: int  # per process
    learning_rate: float
    gradient_accumulation_steps: int = 1
    tile_size: tuple[int, int] | None = None  # (height, width); None: data.tile_size
    checkpoint_every: int = 10000
    keep_checkpoints: int = 3
    validate_every: int = 10000
    log_every: int = 1  # rows of log.csv (and tracker points)

    def __post_init__(self):
        for name in ("steps", "batch_size", "gradient_accumulation_steps", "checkpoint_every", "keep_checkpoints",
                     "validate_every", "log_every"):
            _positive(name, getattr(self, name))
        _positive("learning_rate", self.learning_rate)


@dataclass
class TrainConfig:
    """A whole training run: the model preset, the shared settings and one :class:`StageConfig` per stage."""

    model: str = "tiny"  # imagpose model preset (architecture): tiny | sd15 | mid
    seed: int = 12580
    mixed_precision: str = "no"  # accelerate: no | fp16 | bf16 (official: fp16, GPU only)
    gradient_checkpointing: bool = False
    ema_decay: float | None = None  # diffusers EMAModel decay; None: no EMA (official)
    # DDIM beta schedule of the saved pipeline: the training one. The official inference uses "linear", a
    # mismatch inherited from Moore-AnimateAnyone (docs/parity_pitfalls.md #5)
    inference_beta_schedule: str = "scaled_linear"
    trackers: tuple[str, ...] = ()  # accelerate trackers, used when installed
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    distillation: DistillationConfig = field(default_factory=DistillationConfig)
    stages: dict[str, StageConfig] = field(default_factory=dict)

    def __post_init__(self):
        check_seed(self.seed, "seed")
        _choice("model", self.model, tuple(PRESETS))
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        _choice("inference_beta_schedule", self.inference_beta_schedule, BETA_SCHEDULES)
        for tracker in self.trackers:
            _choice("trackers", tracker, TRACKERS)
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise InvalidArgumentError(f"ema_decay must be in (0, 1) or null, got {self.ema_decay}.")
        for name in self.stages:
            if name not in (*STAGES, DISTILL_STAGE):
                raise InvalidArgumentError(f"unknown key 'stages.{name}'; the stages are {', '.join(STAGES)} and "
                                           f"{DISTILL_STAGE}.")

    def stage(self, name: str) -> StageConfig:
        if name not in self.stages:
            raise InvalidArgumentError(f"The config has no stages.{name} section; add one (see train/presets/).")
        return self.stages[name]

    def tile_size(self, stage: str) -> tuple[int, int]:
        """(height, width) of one view in ``stage`` (the official stage 2 trains on 768x512 tiles)."""
        return self.stage(stage).tile_size or self.data.tile_size

    def to_dict(self) -> dict:
        """Plain data (tuples as lists), as in a YAML file: saved in every checkpoint and beside every run."""
        return _plain(dataclasses.asdict(self))


# ----------------------------------------------------------------------------- loading
def preset_names() -> list[str]:
    return sorted(p.stem for p in _presets_dir().glob("*.yaml"))


def _presets_dir() -> Path:
    return Path(str(resources.files("imagpose.train") / "presets"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A preset name (``tiny``) -> ``train/presets/tiny.yaml``; anything ending in .yaml/.yml is a file path."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")):
        return Path(text)
    path = _presets_dir() / f"{text}.yaml"
    if not path.is_file():
        raise InvalidArgumentError(f"No training preset {text!r}; choose one of {', '.join(preset_names())} or pass "
                                   "a .yaml file.")
    return path


def load_config(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The :class:`TrainConfig` of a preset or YAML file, with ``KEY=VALUE`` overrides (dotted keys, YAML values)."""
    path = resolve_config_path(name_or_path)
    if not path.is_file():
        raise InputFileError(f"Training config {path} does not exist; pass a preset name ({', '.join(preset_names())})"
                             " or an existing .yaml file.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{path} is not a text file (byte {exc.start} is not UTF-8); pass a YAML config "
                             "(see train/presets/).") from exc
    except RecursionError as exc:
        raise InputFileError(f"{path} nests too deeply to be a training config; pass a YAML config "
                             "(see train/presets/).") from exc
    except yaml.YAMLError as exc:
        raise InputFileError(f"{path} is not valid YAML ({exc}).") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputFileError(f"{path} must hold a YAML mapping of config keys, got {type(data).__name__}.")
    for override in overrides:
        _apply_override(data, override)
    return config_from_dict(data, source=str(path))


def config_from_dict(data: dict, source: str = "config") -> TrainConfig:
    """Validate plain data (a parsed YAML file) into a :class:`TrainConfig`; errors name ``source`` and the key."""
    try:
        return _convert(data, TrainConfig, "")
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{source}: {exc}") from None


def _apply_override(data: dict, override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise InvalidArgumentError(f"Override {override!r} must look like KEY=VALUE, e.g. stages.stage1.steps=100.")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgumentError(f"Override {override!r}: {text!r} is not a YAML value ({exc}).") from exc
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise InvalidArgumentError(f"Override {override!r}: {part!r} is not a section.")
        node = child
    node[parts[-1]] = value


def _convert(value, annotation, key: str):
    """``value`` (parsed YAML) as ``annotation``, or an InvalidArgumentError naming ``key``."""
    where = key or "the top level"
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise InvalidArgumentError(f"{where} must be a mapping, got {value!r}.")
        hints = typing.get_type_hints(annotation)
        names = [f.name for f in dataclasses.fields(annotation)]
        for name in value:
            if name not in names:
                raise InvalidArgumentError(f"unknown key {_join(key, str(name))!r}; known keys here: "
                                           f"{', '.join(names)}.")
        kwargs = {name: _convert(value[name], hints[name], _join(key, name)) for name in names if name in value}
        try:
            return annotation(**kwargs)
        except TypeError as exc:  # a required field without a default
            missing = [f.name for f in dataclasses.fields(annotation) if f.name not in kwargs
                       and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
            raise InvalidArgumentError(f"{where} is missing {', '.join(_join(key, m) for m in missing)}.") from exc
        except InvalidArgumentError as exc:  # a __post_init__ check names the field; prefix its section
            raise InvalidArgumentError(f"{key}.{exc}" if key else str(exc)) from None
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise InvalidArgumentError(f"{where} must be a mapping, got {value!r}.")
        _, value_type = typing.get_args(annotation)
        return {str(k): _convert(v, value_type, _join(key, str(k))) for k, v in value.items()}
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise InvalidArgumentError(f"{where} must be a list, got {value!r}.")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise InvalidArgumentError(f"{where} must be a list of {len(args)} values, got {list(value)}.")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if annotation is bool:
        if not isinstance(value, bool):
            raise InvalidArgumentError(f"{where} must be true or false, got {value!r}.")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgumentError(f"{where} must be an integer, got {value!r}.")
        return value
    if annotation is float:
        # YAML 1.1 reads 5e-5 (no dot) as a string; accept any text float() reads
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass  # not a number: refused just below with the key's name
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidArgumentError(f"{where} must be a number, got {value!r}.")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise InvalidArgumentError(f"{where} must be a string, got {value!r}.")
        return value
    raise TypeError(f"No YAML conversion for {annotation!r} ({where}).")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise InvalidArgumentError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}.")


def _positive(name: str, value) -> None:
    if not value > 0:
        raise InvalidArgumentError(f"{name} must be positive, got {value!r}.")


def _at_least(name: str, value, minimum) -> None:
    if not (value >= minimum and math.isfinite(value)):
        raise InvalidArgumentError(f"{name} must be a finite number at least {minimum}, got {value!r}.")
