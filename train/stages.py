"""The three official training stages: which networks each one builds, loads and trains.

    stage    UNet                                  starts from                                   trains
    stage1   no CVA modules (cva_* all False)      an SD1.5-layout UNet folder, conv_in fresh     UNet, PoseGuider, FLC
                                                   (9 input channels), or fresh for tiny
    stage2   with CVA                              the stage-1 pipeline folder; CVA from a        CVA modules only
                                                   motion-module file or fresh (proj_out zero)
    end2end  with CVA                              the stage-2 pipeline folder                    UNet (CVA too),
                                                                                                  PoseGuider, FLC
The VAE and the image encoder (DINOv2) are frozen in every stage. Official sources: ``train_stage1.py:182-211``
(``requires_grad_(True)`` on the UNet, pose guider and patch), ``train_stage2.py`` (everything frozen, then every
parameter under a module named ``motion_modules``), ``train_end2end.py`` (UNet, pose guider and patch).

"Fresh" means each module's constructor initialisation under a seed, as a from-scratch run gets it: the pose
guider's ``conv_out`` is zero (ControlNet), and a fresh CVA module has a zero ``proj_out`` (AnimateDiff's
``zero_initialize``), so a new CVA starts as the identity.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from imagpose.convert import load_strict, unet_config_from_official
from imagpose.errors import InvalidArgumentError
from imagpose.io import MissingInputFileError, check_model_folder, load_state_dict_file, read_json_file
from imagpose.models import FLCTokenizer, IMAGPoseUNet, PoseGuider
from imagpose.presets import Preset, build_components, get_preset

from .config import STAGES
from .loop import trainable_parameters

CVA_MODULE_NAME = "motion_modules"  # the official name of the CVA module lists (state-dict keys too)
TRAINABLE_MODULES = ("unet", "pose_guider", "flc_tokenizer")
# diffusers UNet config fields that fix the architecture our preset must match, as named in our config
ARCHITECTURE_FIELDS = ("down_block_types", "up_block_types", "block_out_channels", "layers_per_block",
                       "norm_num_groups", "cross_attention_dim", "num_attention_heads", "use_linear_projection",
                       "out_channels", "flip_sin_to_cos", "freq_shift", "downsample_padding", "mid_block_scale_factor")


class IMAGPoseTrainingModel(nn.Module):
    """The trainable networks as one module, the one accelerate wraps (the official ``Net``)."""

    def __init__(self, unet: IMAGPoseUNet, pose_guider: PoseGuider, flc_tokenizer: FLCTokenizer):
        super().__init__()
        self.unet = unet
        self.pose_guider = pose_guider
        self.flc_tokenizer = flc_tokenizer

    def forward(self, sample, timesteps, dino_tokens, pose, reference_latents, grid):
        """sample (B, 9, h, w), timesteps (B,), dino_tokens (B, 257, D), pose (B, 3, Hc, Wc) in [0, 1],
        reference_latents (B, 4, h, w) -> prediction (B, 4, h, w)."""
        pose_features = self.pose_guider(pose)  # F_P, (B, C0, h, w)
        context = torch.cat([dino_tokens, self.flc_tokenizer(reference_latents)], dim=1)  # F_C, DINO first
        return self.unet(sample, timesteps, context, pose_features, grid=tuple(grid), return_dict=False)[0]


@dataclass
class StageModels:
    """Everything a stage runs: the trainable model and the frozen encoders."""

    model: IMAGPoseTrainingModel
    vae: nn.Module
    image_encoder: nn.Module


def check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise InvalidArgumentError(f"Unknown stage {stage!r}; the stages are {', '.join(STAGES)}.")


def stage_unet_config(preset: Preset, stage: str) -> dict:
    """The preset's UNet config; stage 1 has no CVA modules."""
    config = dict(preset.unet)
    if stage == "stage1":
        levels = len(config["block_out_channels"])
        config.update(cva_down_blocks=[False] * levels, cva_mid_block=False, cva_up_blocks=[False] * levels)
    return config


def build_trainable(stage: str, preset: str | Preset, seed: int = 0, device: str | torch.device = "cpu"
                    ) -> IMAGPoseTrainingModel:
    """The stage's trainable networks, freshly initialised under ``seed`` (on "meta": shapes only), with
    ``requires_grad`` set by :func:`select_trainable`. Weights are loaded by :func:`build_stage`."""
    check_stage(stage)
    spec = get_preset(preset) if isinstance(preset, str) else preset
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = IMAGPoseTrainingModel(IMAGPoseUNet(**stage_unet_config(spec, stage)), PoseGuider(**spec.pose_guider),
                                      FLCTokenizer(**spec.flc))
    for _, cva in model.unet.cva_modules():
        nn.init.zeros_(cva.temporal_transformer.proj_out.weight)
        nn.init.zeros_(cva.temporal_transformer.proj_out.bias)
    select_trainable(model, stage)
    return model


def select_trainable(model: IMAGPoseTrainingModel, stage: str) -> None:
    """Set ``requires_grad`` by the official rule of the stage (see the module docstring)."""
    check_stage(stage)
    model.requires_grad_(stage != "stage2")
    if stage == "stage2":
        for name, module in model.unet.named_modules():
            if name.endswith(CVA_MODULE_NAME):
                module.requires_grad_(True)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in trainable_parameters(model))


# ----------------------------------------------------------------------------- loading weights
def build_stage(stage: str, preset: str | Preset, seed: int, weights, init_from: str | Path | None = None
                ) -> StageModels:
    """The models of a stage with their starting weights (all on the CPU, float32).

    ``weights`` is a :class:`~imagpose.train.config.WeightsConfig`. Stage 1 starts from
    ``weights.pretrained_unet`` (or fresh) and takes the VAE / image encoder from ``weights`` (or the preset's
    random ones, seed 0 as ``imagpose.build_pipeline``); stages 2 and end2end start from ``init_from``, the
    pipeline folder the previous stage wrote, and take every component there.
    """
    spec = get_preset(preset) if isinstance(preset, str) else preset
    model = build_trainable(stage, spec, seed)
    if stage == "stage1":
        if weights.pretrained_unet:
            load_pretrained_unet(model.unet, weights.pretrained_unet, spec)
        vae, image_encoder = load_frozen_encoders(spec, weights.vae, weights.image_encoder)
    else:
        if init_from is None:
            previous = STAGES[STAGES.index(stage) - 1]
            raise InvalidArgumentError(f"{stage} starts from the pipeline folder {previous} wrote; run {previous} "
                                       "first or give its folder (--init-from).")
        vae, image_encoder = load_previous_stage(model, init_from, stage, weights.motion_module)
    for frozen in (vae, image_encoder):
        frozen.requires_grad_(False).eval()
    check_compatible(model, vae, image_encoder)
    return StageModels(model, vae, image_encoder)


def load_pretrained_unet(unet: IMAGPoseUNet, folder: str | Path, preset: Preset) -> None:
    """Stage 1: an SD1.5-layout diffusers UNet folder into our stage-1 UNet. Every key must fit except
    ``conv_in.weight`` (4 -> 9 input channels), which keeps its fresh initialisation, as the official
    ``from_pretrained(..., in_channels=9, ignore_mismatched_sizes=True)``."""
    folder = Path(folder)
    fix = "pass a diffusers UNet2DConditionModel folder of the SD1.5 layout (stable-diffusion-v1-5/unet)"
    check_model_folder(folder, "config.json", None, fix)
    weights_name = _weights_file(folder, fix)
    if weights_name.endswith(".safetensors"):
        check_model_folder(folder, "config.json", weights_name, fix)
    theirs = read_json_file(folder / "config.json", fix)
    if theirs.get("mid_block_type") == "UNetMidBlock2DCrossAttn":
        theirs = {k: v for k, v in theirs.items() if k != "mid_block_type"}  # the 2-D name of the official block
    mapped = unet_config_from_official(theirs)
    for name in ARCHITECTURE_FIELDS:
        if list_if_tuple(mapped[name]) != list_if_tuple(unet.config[name]):
            raise InvalidArgumentError(
                f"{folder} holds a UNet with {name}={mapped[name]!r}, but the {preset.name!r} preset needs "
                f"{unet.config[name]!r}; {fix}, or choose the matching model preset.")
    state = load_state_dict_file(folder / weights_name)
    state["conv_in.weight"] = unet.conv_in.weight.detach().clone()  # fresh: 9 input channels
    load_strict(unet, state, f"unet ({folder})")


def _weights_file(folder: Path, fix: str) -> str:
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (folder / name).is_file():
            return name
    raise MissingInputFileError(f"{folder} has no diffusion_pytorch_model.safetensors (or .bin); {fix}.")


def list_if_tuple(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def load_frozen_encoders(preset: Preset, vae_folder: str | Path | None, image_encoder_folder: str | Path | None):
    """(vae, image_encoder) from local folders, or the preset's deterministic random ones (seed 0)."""
    from imagpose.autoencoders import FOLDER_FIX, colour_capacity_problem, load_autoencoder
    from imagpose.models import IMAGPoseImageEncoder

    random = build_components(preset, seed=0) if vae_folder is None or image_encoder_folder is None else {}
    if vae_folder is not None:
        check_model_folder(vae_folder, "config.json", "diffusion_pytorch_model.safetensors", FOLDER_FIX)
        vae = load_autoencoder(vae_folder)
        problem = colour_capacity_problem(vae)
        if problem is not None:
            warnings.warn(f"The autoencoder {vae_folder} may not reproduce colour: {problem}; the model trained on "
                          "its latents inherits that (imagpose train vae trains one that does).", stacklevel=2)
    else:
        vae = random["vae"]
    if image_encoder_folder is not None:
        check_model_folder(image_encoder_folder, "config.json", "model.safetensors",
                           "pass a local transformers DINOv2 folder (dinov2-base)")
        image_encoder = IMAGPoseImageEncoder.from_pretrained(image_encoder_folder)
    else:
        image_encoder = random["image_encoder"]
    return vae.float(), image_encoder.float()


def load_previous_stage(model: IMAGPoseTrainingModel, folder: str | Path, stage: str,
                        motion_module: str | Path | None = None):
    """Load the pipeline folder of the previous stage into ``model``; returns its (vae, image_encoder).

    Stage 2: the stage-1 UNet has no CVA modules; every other key must match ours exactly, and the CVA modules
    come from ``motion_module`` (only its ``motion_modules.*`` keys are read: the official stage 2 re-loads the
    stage-1 weights over a full UNet3D file) or stay fresh. End2end: the stage-2 folder fills every key.
    """
    from imagpose.pipeline import IMAGPosePipeline

    previous = IMAGPosePipeline.from_pretrained(folder)
    state = dict(previous.unet.state_dict())
    if stage == "stage2":
        if previous.unet.cva_modules():
            raise InvalidArgumentError(f"{folder} holds a UNet with CVA modules, but stage2 starts from the stage-1 "
                                       "pipeline (no CVA); give the stage1/pipeline folder.")
        ours = model.unet.state_dict()
        cva = ({k: v for k, v in ours.items() if _is_cva_key(k)} if motion_module is None
               else load_motion_module(motion_module, ours))
        state.update(cva)
    load_strict(model.unet, state, f"unet ({folder})")
    load_strict(model.pose_guider, previous.pose_guider.state_dict(), f"pose_guider ({folder})")
    load_strict(model.flc_tokenizer, previous.flc_tokenizer.state_dict(), f"flc_tokenizer ({folder})")
    return previous.vae, previous.image_encoder


def _is_cva_key(key: str) -> bool:
    return f".{CVA_MODULE_NAME}." in key


def load_motion_module(path: str | Path, unet_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The CVA tensors of a motion-module file (safetensors, or a torch file read with ``weights_only=True``):
    every CVA key of our UNet must be there with our shape; its non-CVA keys are ignored (see above)."""
    from imagpose.convert import ConversionError

    state = load_state_dict_file(path)
    cva = {}
    for key, ours in unet_state.items():
        if not _is_cva_key(key):
            continue
        if key not in state:
            raise ConversionError(f"Motion-module file {path} lacks the CVA key {key!r}; it must hold the "
                                  "motion_modules.* tensors of this UNet (AnimateDiff / Moore-AnimateAnyone layout).")
        if tuple(state[key].shape) != tuple(ours.shape):
            raise ConversionError(f"Motion-module file {path}: {key!r} has shape {tuple(state[key].shape)}, the UNet "
                                  f"needs {tuple(ours.shape)}.")
        cva[key] = state[key]
    return cva


def check_compatible(model: IMAGPoseTrainingModel, vae, image_encoder) -> None:
    """The frozen encoders must fit the UNet: 4 latent channels, 8x VAE, DINO width = cross-attention width."""
    from imagpose.autoencoders import downscale_factor

    unet = model.unet.config
    downscale = downscale_factor(vae)
    if vae.config.latent_channels != unet.out_channels or downscale != 8:
        raise InvalidArgumentError(
            f"The VAE has {vae.config.latent_channels} latent channels and a {downscale}x downscale; the UNet needs "
            f"{unet.out_channels} channels and 8x (an SD-style AutoencoderKL or AutoencoderTiny).")
    if image_encoder.config.hidden_size != unet.cross_attention_dim:
        raise InvalidArgumentError(
            f"The image encoder emits {image_encoder.config.hidden_size}-d tokens but the UNet's cross-attention "
            f"takes {unet.cross_attention_dim}-d; use the image encoder of the model preset.")
