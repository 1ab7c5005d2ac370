"""Official IMAGPose checkpoints -> imagpose components, through an explicit, strict key map.

Official files (``torch.save(model.state_dict())``, no module prefix, probably fp16):
    denoising_unet-N.pth   stage-1 2D UNet (no CVA) or stage-3 full UNet3D
    motion_module-N.pth    stage-2/3: despite the name, a full UNet3D state dict
    pose_guider-N.pth      PoseGuider
    patch-N.pth            PatchEmbedding (our FLCTokenizer)

Key map (official -> ours); every other key is kept under its own name:
    conv3d_in.*  -> conv_in.*     pre-PR#10 code had two input convs; the 5-D (inference) path used conv3d_in
    conv2d_in.*  -> conv_in.*     only when there is no conv3d_in; otherwise dropped (the 2-D path was unused)
    conv_in.*    -> conv_in.*
Checks: every source key is consumed or listed as deliberately dropped; every target key is filled; every
shape matches. A stage-1 checkpoint without any ``motion_modules.*`` key converts to a UNet without CVA; a
pre-PR#10 checkpoint without ``conv_norm_out.*`` converts to ``final_norm=False`` (its forward skipped it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import InputFileError
from .io import OutputFolder, load_state_dict_file
from .models import FLCTokenizer, IMAGPoseUNet, PoseGuider


class ConversionError(InputFileError):
    """A checkpoint does not fit the model it is converted to; the message names the first bad key."""


# ----------------------------------------------------------------------------- configs
_UNSUPPORTED_OFFICIAL = {
    # key: value the official config must have (anything else changes the architecture in ways we do not build)
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "class_embed_type": None,
    "num_class_embeds": None,
    "resnet_time_scale_shift": "default",
    "unet_use_cross_frame_attention": (False, None),
    "unet_use_temporal_attention": (False, None),
}


def unet_config_from_official(official: dict, additional_kwargs: dict | None = None) -> dict:
    """Map an official ``UNet3DConditionModel`` config (plus ``unet_additional_kwargs``) to ours.

    The CVA placement follows the official rule: down block i carries CVA when ``2**i`` is in
    ``motion_module_resolutions`` (and not decoder-only); up block i when ``2**(3 - i)`` is (the 3 is
    hard-coded upstream, whatever the depth); the mid block when ``motion_module_mid_block``.
    """
    cfg = {**official, **(additional_kwargs or {})}
    missing = [k for k in ("block_out_channels", "down_block_types", "up_block_types") if k not in cfg]
    if missing:
        raise ConversionError(f"Official UNet config lacks {missing}; pass the UNet3D config the checkpoint was "
                              "trained with (e.g. unet3d_config of the official fixtures).")
    for key, allowed in _UNSUPPORTED_OFFICIAL.items():
        allowed = allowed if isinstance(allowed, tuple) else (allowed,)
        if cfg.get(key, allowed[0]) not in allowed:
            raise ConversionError(f"Official config {key}={cfg[key]!r} is not supported (expected {allowed[0]!r}).")
    mid = cfg.get("mid_block_type", "UNetMidBlock3DCrossAttn")
    if mid != "UNetMidBlock3DCrossAttn":
        raise ConversionError(f"Official mid_block_type {mid!r} is not supported.")
    if cfg.get("act_fn", "silu") != "silu":
        raise ConversionError("Only act_fn='silu' is supported.")

    levels = len(cfg["block_out_channels"])
    use_mm = bool(cfg.get("use_motion_module", False))
    resolutions = list(cfg.get("motion_module_resolutions", (1, 2, 4, 8)))
    decoder_only = bool(cfg.get("motion_module_decoder_only", False))
    mm = dict(cfg.get("motion_module_kwargs") or {})
    block_types = mm.get("attention_block_types", ("Temporal_Self", "Temporal_Self"))
    if use_mm and any(t != "Temporal_Self" for t in block_types):
        raise ConversionError(f"Only Temporal_Self CVA attention blocks are supported, got {block_types}.")
    if use_mm and cfg.get("motion_module_type", "Vanilla") != "Vanilla":
        raise ConversionError("Only motion_module_type='Vanilla' is supported.")

    def strip(name: str) -> str:
        return name.replace("3D", "").replace("2D", "")

    return dict(
        sample_size=cfg.get("sample_size", 64),
        in_channels=cfg.get("in_channels", 9),
        out_channels=cfg.get("out_channels", 4),
        down_block_types=[strip(t) for t in cfg["down_block_types"]],
        up_block_types=[strip(t) for t in cfg["up_block_types"]],
        block_out_channels=list(cfg["block_out_channels"]),
        layers_per_block=cfg.get("layers_per_block", 2),
        downsample_padding=cfg.get("downsample_padding", 1),
        mid_block_scale_factor=cfg.get("mid_block_scale_factor", 1.0),
        act_fn="silu",
        norm_num_groups=cfg.get("norm_num_groups", 32),
        norm_eps=cfg.get("norm_eps", 1e-5),
        cross_attention_dim=cfg.get("cross_attention_dim", 768),
        num_attention_heads=cfg.get("attention_head_dim", 8),
        use_linear_projection=bool(cfg.get("use_linear_projection", False)),
        upcast_attention=bool(cfg.get("upcast_attention", False)),
        flip_sin_to_cos=cfg.get("flip_sin_to_cos", True),
        freq_shift=cfg.get("freq_shift", 0),
        center_input_sample=bool(cfg.get("center_input_sample", False)),
        cva_down_blocks=[use_mm and 2**i in resolutions and not decoder_only for i in range(levels)],
        cva_mid_block=use_mm and bool(cfg.get("motion_module_mid_block", False)),
        cva_up_blocks=[use_mm and 2 ** (3 - i) in resolutions for i in range(levels)],
        cva_num_heads=mm.get("num_attention_heads", 8),
        cva_num_layers=mm.get("num_transformer_block", 2),
        cva_attention_blocks=len(block_types),
        cva_head_dim_div=mm.get("temporal_attention_dim_div", 1),
        cva_max_views=mm.get("temporal_position_encoding_max_len", 24),
        cva_position_encoding=bool(mm.get("temporal_position_encoding", False)),
    )


def pose_guider_config_from_official(init: dict) -> dict:
    return dict(
        conditioning_embedding_channels=init["conditioning_embedding_channels"],
        conditioning_channels=init.get("conditioning_channels", 3),
        block_out_channels=list(init.get("block_out_channels", (16, 32, 64, 128))),
    )


def flc_config_from_official(init: dict) -> dict:
    return dict(in_channels=init.get("in_chans", 4), embed_dim=init.get("embed_dim", 768),
                patch_size=init.get("patch_size", 16))


# ----------------------------------------------------------------------------- key maps
_INPUT_CONV = re.compile(r"^conv(3d|2d)_in\.(weight|bias)$")


@dataclass
class ConversionReport:
    component: str
    source: str
    renamed: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    num_tensors: int = 0
    dtypes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{self.component}: {self.num_tensors} tensors from {self.source} (dtypes {', '.join(self.dtypes)})"]
        out += [f"  renamed  {src} -> {dst}" for src, dst in self.renamed]
        out += [f"  dropped  {key}: {why}" for key, why in self.dropped]
        out += [f"  note     {note}" for note in self.notes]
        return out


def map_official_unet_keys(state: dict[str, torch.Tensor], report: ConversionReport) -> dict[str, torch.Tensor]:
    """Apply the official -> ours key map to a UNet state dict (see module docstring)."""
    has_3d = any(k.startswith("conv3d_in.") for k in state)
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = _INPUT_CONV.match(key)
        if match and match.group(1) == "2d" and has_3d:
            report.dropped.append((key, "pre-PR#10 2-D input conv; inference and stages 2-3 used conv3d_in"))
            continue
        new_key = f"conv_in.{match.group(2)}" if match else key
        if new_key != key:
            report.renamed.append((key, new_key))
        if new_key in mapped:
            raise ConversionError(f"Two source keys map to {new_key!r}; the checkpoint is ambiguous.")
        mapped[new_key] = tensor
    return mapped


def unet_config_overrides_for(state: dict[str, torch.Tensor], report: ConversionReport) -> dict:
    """Architecture switches implied by which keys a checkpoint has (stage-1 / pre-PR#10 checkpoints)."""
    overrides = {}
    if not any(".motion_modules." in k for k in state):
        overrides.update(cva_down_blocks=None, cva_mid_block=False, cva_up_blocks=None)
        report.notes.append("no motion_modules.* keys: a stage-1 UNet, converted without CVA modules")
    if not any(k.startswith("conv_norm_out.") for k in state):
        overrides["final_norm"] = False
        report.notes.append(
            "no conv_norm_out.* keys: a pre-PR#10 checkpoint whose forward skipped the final GroupNorm+SiLU; "
            "converted with final_norm=False to keep that behaviour"
        )
    return overrides


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], component: str) -> None:
    """Copy ``state`` into ``model``: same key set, same shapes, or a ConversionError naming the first bad key."""
    expected = model.state_dict()
    for key in expected:
        if key not in state:
            raise ConversionError(f"{component}: checkpoint is missing key {key!r} ({len(expected)} expected).")
    for key, tensor in state.items():
        if key not in expected:
            raise ConversionError(f"{component}: checkpoint has unexpected key {key!r} (not in the model).")
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ConversionError(
                f"{component}: shape mismatch at {key!r}: checkpoint {tuple(tensor.shape)} vs model "
                f"{tuple(expected[key].shape)}. Check that the config matches the checkpoint."
            )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def _report_for(component: str, source, state) -> ConversionReport:
    return ConversionReport(component, str(source), num_tensors=len(state),
                            dtypes=sorted({str(v.dtype).replace("torch.", "") for v in state.values()}))


def convert_unet(state_or_path, config: dict, dtype=torch.float32) -> tuple[IMAGPoseUNet, ConversionReport]:
    state = state_or_path if isinstance(state_or_path, dict) else load_state_dict_file(state_or_path)
    report = _report_for("unet", state_or_path if not isinstance(state_or_path, dict) else "<state dict>", state)
    state = map_official_unet_keys(state, report)
    overrides = unet_config_overrides_for(state, report)
    levels = len(config["block_out_channels"])
    config = {**config, **{k: (v if v is not None else [False] * levels) for k, v in overrides.items()}}
    with torch.device("meta"):
        model = IMAGPoseUNet(**config)
    model = _cast(model.to_empty(device="cpu"), dtype)
    load_strict(model, state, "unet")
    return model, report


def _cast(model, dtype: torch.dtype):
    return model if dtype == torch.float32 else model.to(dtype)


def convert_pose_guider(state_or_path, config: dict, dtype=torch.float32) -> tuple[PoseGuider, ConversionReport]:
    state = state_or_path if isinstance(state_or_path, dict) else load_state_dict_file(state_or_path)
    report = _report_for("pose_guider", state_or_path if not isinstance(state_or_path, dict) else "<state dict>", state)
    model = _cast(PoseGuider(**config), dtype)
    load_strict(model, state, "pose_guider")
    return model, report


def convert_flc(state_or_path, config: dict, dtype=torch.float32) -> tuple[FLCTokenizer, ConversionReport]:
    state = state_or_path if isinstance(state_or_path, dict) else load_state_dict_file(state_or_path)
    report = _report_for("flc_tokenizer", state_or_path if not isinstance(state_or_path, dict) else "<state dict>",
                         state)
    model = _cast(FLCTokenizer(**config), dtype)
    load_strict(model, state, "flc_tokenizer")
    return model, report


def convert_official_checkpoints(
    out_dir: str | Path,
    unet: str | Path | None = None,
    pose_guider: str | Path | None = None,
    patch: str | Path | None = None,
    preset: str = "sd15",
    official_unet_config: dict | None = None,
    dtype: torch.dtype = torch.float32,
    vae: str | Path | None = None,
    image_encoder: str | Path | None = None,
) -> list[ConversionReport]:
    """Convert whichever official files are given and write them as ``OUT/{unet,pose_guider,flc_tokenizer}``.

    With all three official files plus ``vae`` (a diffusers AutoencoderKL folder, e.g. sd-vae-ft-mse, or an
    AutoencoderTiny folder, e.g. a TAESD that decodes SD-1.5 latents) and
    ``image_encoder`` (a transformers DINOv2 folder, e.g. dinov2-base), OUT is a complete pipeline folder
    (``IMAGPosePipeline.from_pretrained(OUT)``, ``imagpose generate --model OUT``) with the official DDIM.
    The architecture comes from ``official_unet_config`` (an official UNet3D config dict) when given, else
    from the named preset. OUT may hold other files: they are kept (see :class:`imagpose.io.OutputFolder`); it is
    checked before any checkpoint is read, and a failed conversion leaves it as it was.
    """
    from .presets import get_preset

    if not any((unet, pose_guider, patch)):
        raise ConversionError("Nothing to convert: pass at least one of --unet, --pose-guider, --patch.")
    full_pipeline = vae is not None or image_encoder is not None
    if full_pipeline and not all((unet, pose_guider, patch, vae, image_encoder)):
        raise ConversionError("A complete pipeline needs --unet, --pose-guider, --patch, --vae and --image-encoder.")
    spec = get_preset(preset)
    unet_config = unet_config_from_official(official_unet_config) if official_unet_config else dict(spec.unet)
    jobs = [("unet", unet, convert_unet, unet_config),
            ("pose_guider", pose_guider, convert_pose_guider, dict(spec.pose_guider)),
            ("flc_tokenizer", patch, convert_flc, dict(spec.flc))]
    with OutputFolder(out_dir) as out:
        reports, models = [], {}
        for name, path, fn, config in jobs:
            if path is not None:
                models[name], report = fn(path, config, dtype)
                reports.append(report)
        if full_pipeline:
            from .pipeline import IMAGPosePipeline
            from .schedulers import official_ddim_scheduler

            pipe = IMAGPosePipeline(**models, vae=_load_vae(vae, dtype), image_encoder=_load_image_encoder(
                image_encoder, dtype, models["unet"].config.cross_attention_dim), scheduler=official_ddim_scheduler())
            pipe.save_pretrained(out.path())
        else:
            for name, model in models.items():
                model.save_pretrained(out.path(name))
    return reports


def _load_vae(path, dtype):
    from .autoencoders import AUTOENCODER_CLASSES, downscale_factor, folder_class_name, load_autoencoder

    if not (Path(path) / "config.json").is_file():
        raise ConversionError(f"--vae {path} is not a diffusers {' or '.join(AUTOENCODER_CLASSES)} folder (no "
                              "config.json).")
    folder_class_name(path)  # an unsupported class is named before any weight is read
    vae = load_autoencoder(path, dtype)
    if vae.config.latent_channels != 4 or downscale_factor(vae) != 8:
        raise ConversionError(f"--vae {path} has {vae.config.latent_channels} latent channels and a "
                              f"{downscale_factor(vae)}x downscale; IMAGPose's UNet needs SD-1.5's 4 channels at 8x.")
    return vae


def _load_image_encoder(path, dtype, context_dim: int):
    from .models import IMAGPoseImageEncoder

    if not (Path(path) / "config.json").is_file():
        raise ConversionError(f"--image-encoder {path} is not a transformers DINOv2 folder (no config.json).")
    encoder = IMAGPoseImageEncoder.from_pretrained(path, dtype=dtype).eval()
    if encoder.config.hidden_size != context_dim:
        raise ConversionError(f"The image encoder emits {encoder.config.hidden_size}-d tokens but the UNet's "
                              f"cross-attention takes {context_dim}-d (the official code uses DINOv2-base, 768).")
    return encoder
