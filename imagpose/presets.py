"""Model presets as data: ``sd15`` (the official full-size model) and ``tiny`` (tests and the demo).

A preset fixes the architecture of every component. ``build_pipeline(preset)`` makes a pipeline with
random weights (no download); trained weights come from ``IMAGPosePipeline.from_pretrained`` or
``imagpose convert``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SD15_UNET = dict(
    sample_size=64, in_channels=9, out_channels=4,
    down_block_types=["CrossAttnDownBlock"] * 3 + ["DownBlock"],
    up_block_types=["UpBlock"] + ["CrossAttnUpBlock"] * 3,
    block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, norm_num_groups=32,
    cross_attention_dim=768, num_attention_heads=8,
    cva_down_blocks=[True] * 4, cva_mid_block=True, cva_up_blocks=[True] * 4, cva_num_heads=8,
    cva_num_layers=1, cva_attention_blocks=2, cva_max_views=32,
)

# sd-vae-ft-mse (stabilityai), the VAE of the official inference config
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    layers_per_block=2, norm_num_groups=32, act_fn="silu", sample_size=256, scaling_factor=0.18215,
)

# facebook/dinov2-base, the image encoder of the official code (the paper names DINOv2-G, which would need
# a projection to 768 that the code does not have)
DINOV2_BASE = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, image_size=518, patch_size=14,
    layerscale_value=1.0, qkv_bias=True, use_swiglu_ffn=False, hidden_act="gelu", layer_norm_eps=1e-6,
)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    unet: dict
    vae: dict
    image_encoder: dict
    pose_guider: dict
    flc: dict
    vae_class: str = "AutoencoderKL"  # or "AutoencoderTiny" (imagpose.autoencoders)


PRESETS = {
    "sd15": Preset(
        name="sd15",
        description="official size: SD1.5 UNet + 21 CVA modules, sd-vae-ft-mse, DINOv2-base (1.31B UNet numbers)",
        unet=SD15_UNET, vae=SD_VAE, image_encoder=DINOV2_BASE,
        pose_guider=dict(conditioning_embedding_channels=320, conditioning_channels=3,
                         block_out_channels=[16, 32, 96, 256]),
        flc=dict(in_channels=4, embed_dim=768, patch_size=16),
    ),
    "tiny": Preset(
        name="tiny",
        description="random-weight miniature of every component (3 UNet levels, CVA everywhere) for tests/demo",
        unet=dict(
            sample_size=32, in_channels=9, out_channels=4,
            down_block_types=["CrossAttnDownBlock", "CrossAttnDownBlock", "DownBlock"],
            up_block_types=["UpBlock", "CrossAttnUpBlock", "CrossAttnUpBlock"],
            block_out_channels=[32, 32, 64], layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
            num_attention_heads=4, cva_down_blocks=[True] * 3, cva_mid_block=True, cva_up_blocks=[True] * 3,
            cva_num_heads=8, cva_num_layers=1, cva_attention_blocks=2, cva_max_views=32,
        ),
        # the TAESD design (diffusers' AutoencoderTiny: no norms, deterministic latents) at 16 channels, one block
        # per level (TAESD: 64 channels, 1/3/3/3 blocks): 8x, 4 latent channels. The trained models widen it
        # (`autoencoder.channels` of train/presets/tiny*.yaml)
        vae_class="AutoencoderTiny",
        vae=dict(
            in_channels=3, out_channels=3, latent_channels=4, encoder_block_out_channels=[16] * 4,
            decoder_block_out_channels=[16] * 4, num_encoder_blocks=[1] * 4, num_decoder_blocks=[1] * 4,
            act_fn="relu", upsample_fn="nearest", scaling_factor=1.0,
        ),
        image_encoder=dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=518,
            patch_size=14, layerscale_value=1.0, qkv_bias=True, use_swiglu_ffn=False, hidden_act="gelu",
            layer_norm_eps=1e-6,
        ),
        pose_guider=dict(conditioning_embedding_channels=32, conditioning_channels=3,
                         block_out_channels=[4, 8, 16, 32]),
        flc=dict(in_channels=4, embed_dim=32, patch_size=16),
    ),
    "mid": Preset(
        name="mid",
        description="SD1.5 layout at ~0.4x width (128/256/512/512, CVA everywhere, DINOv2-small size): a "
                    "mid-size model for CPU benchmarks",
        unet=dict(SD15_UNET, block_out_channels=[128, 256, 512, 512], cross_attention_dim=384, sample_size=32),
        # 16 groups keep SD's 4 channels per group at the narrowest level (imagpose.autoencoders: colour capacity)
        vae=dict(SD_VAE, block_out_channels=[64, 128, 256, 256], layers_per_block=1, norm_num_groups=16),
        image_encoder=dict(DINOV2_BASE, hidden_size=384, num_hidden_layers=6, num_attention_heads=6),
        pose_guider=dict(conditioning_embedding_channels=128, conditioning_channels=3,
                         block_out_channels=[16, 32, 96, 128]),
        flc=dict(in_channels=4, embed_dim=384, patch_size=16),
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return PRESETS[name]


def randomize_weights(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Deterministic random init that keeps every block active (zero-initialised outputs get weights too).

    Norm weights ~ 1 + 0.1 N, norm biases ~ 0.05 N, other biases ~ 0.02 N, other weights ~ N / sqrt(fan_in).
    The same rule the official fixtures use, so random-weight models behave like the fixtures' models.
    """
    norm_types = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for mod in module.modules():
            for name, param in mod.named_parameters(recurse=False):
                draw = torch.randn(param.shape, generator=generator, dtype=torch.float64).to(param.dtype)
                if isinstance(mod, norm_types):
                    param.copy_(1 + 0.1 * draw if name == "weight" else 0.05 * draw)
                elif name == "bias":
                    param.copy_(0.02 * draw)
                elif param.ndim >= 2:
                    param.copy_(draw / (param.numel() / param.shape[0]) ** 0.5)
                else:  # tokens, layer-scale vectors, position tables
                    param.copy_(0.5 * draw if "lambda" not in name else 1 + 0.1 * draw)


def build_components(preset: str | Preset, seed: int = 0, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32, meta: bool = False) -> dict:
    """Every pipeline component of a preset with deterministic random weights (``meta=True``: shapes only)."""
    from transformers import Dinov2Config

    from .autoencoders import build_autoencoder
    from .models import FLCTokenizer, IMAGPoseImageEncoder, IMAGPoseUNet, PoseGuider
    from .schedulers import official_ddim_scheduler

    spec = get_preset(preset) if isinstance(preset, str) else preset
    with torch.device("meta" if meta else "cpu"):
        components = dict(
            unet=IMAGPoseUNet(**spec.unet),
            vae=build_autoencoder(spec.vae_class, spec.vae),
            image_encoder=IMAGPoseImageEncoder(Dinov2Config(**spec.image_encoder)),
            flc_tokenizer=FLCTokenizer(**spec.flc),
            pose_guider=PoseGuider(**spec.pose_guider),
        )
    if not meta:
        generator = torch.Generator().manual_seed(seed)
        for name in ("unet", "pose_guider", "flc_tokenizer", "vae", "image_encoder"):
            randomize_weights(components[name], generator)
        for module in components.values():
            module.to(device=device).eval()
            if dtype != torch.float32:
                module.to(dtype=dtype)
    components["scheduler"] = official_ddim_scheduler()
    return components


def build_pipeline(preset: str | Preset = "tiny", seed: int = 0, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32):
    """An :class:`~imagpose.pipeline.IMAGPosePipeline` of the preset with deterministic random weights."""
    from .pipeline import IMAGPosePipeline

    return IMAGPosePipeline(**build_components(preset, seed, device, dtype))
