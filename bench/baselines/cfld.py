"""CFLD (Lu et al., "Coarse-to-Fine Latent Diffusion for Pose-Guided Person Image Synthesis", CVPR 2024).

Architecture-faithful re-implementation of the released *inference* path, written from the behaviour of the
public code at ``YanzuoLu/CFLD@f2ea2a7`` (no code copied):

- ``pose_transfer_train.py`` (``build_model``: backbone -> appearance encoder -> pose encoder -> decoder, learnable
  null prompt) and ``pose_transfer_test.py`` (``eval``/``sample``: DDPM loop, ``uc_down_full`` guidance, VAE decode,
  bicubic resize to ``TEST.IMG_SIZE``);
- ``defaults/deepfashion.py``, ``configs/fashion_256.yaml``, ``configs/fashion_512.yaml`` (all sizes below);
- ``models/unet.py`` (``ResidualUNet2DConditionModel``: appearance residuals added to the cross-attention *queries*
  of up-block attention blocks 3..11; pose features as T2I-adapter down-block residuals);
- ``models/swin_transformer.py`` (Swin-B backbone; per-stage features *before* patch merging; no last norm);
- ``models/appearance_encoder.py`` (hybrid-granularity attention, HGA), ``models/pose_encoder.py``,
  ``models/decoder.py`` (perception-refined decoder, cross-attention-first blocks), ``models/vae.py``;
- ``pretrained_models/{unet,vae,scheduler}/config.json`` (SD1.5 UNet, sd-vae-ft-mse, DDPM schedule).

Networks carry random weights. Built with diffusers ``UNet2DConditionModel``/``AutoencoderKL``/
``BasicTransformerBlock``/``ResnetBlock2D`` and transformers ``SwinModel``, as the public code does (it uses
diffusers blocks; its Swin is the Microsoft reference implementation, which ``SwinModel`` reproduces
parameter-for-parameter). Deviations, all without effect on parameter counts beyond rounding or on FLOPs:

- transformers' ``SwinModel`` builds every block's relative-position table for ``window_size`` and only clamps the
  window at run time; the public Swin clamps at construction (window = stage resolution when the stage is not
  larger than the window: stages 3-4 at 256 px). We build the tables at the clamped size, as released.
- Other generation sizes (the benchmark's common 256x192 policy, reduced-size runs): the public code only runs its
  trained square size (512x512 generation, 256x256 conditioning). Here every network follows the input's token
  grids (H, W multiples of 32): a Swin block whose window differs from its table reads the sub-table (smaller
  window) or a bicubic resize (larger), and the decoder's key/value position embedding is bicubic-resized, as the
  public ``load_pretrained`` resizes tables and position embeddings. At the released size nothing is resized.
- Swin attention runs transformers' "eager" path (explicit matmuls), like the public Swin; the UNet and the other
  diffusers blocks use SDPA where the public code uses xformers (same math).
- The appearance encoder's zero-initialised convolutions are left at random init: zero-init is a training
  choice, trained weights are non-zero, and zeros would make the appearance residuals vanish here.
- The public VAE wrapper enables slicing (one sample at a time); we decode the batch at once (same FLOPs).

Sizes: ``CFLD("full")`` is the released configuration (generation at 512x512, a 64x64 latent; conditioning
images at 256x256, half the generation size). ``CFLD("reduced")`` is a CPU-friendly variant with the same
structure (same depths, block types, token grids relative to the generation size), ~0.4-0.5x widths, configured
for half the released size (256x256); see :data:`REDUCED`. Either runs at any size that is a multiple of 32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import Downsample2D, ResnetBlock2D
from torch import nn

from ..meter import Meter, count_flops
from .base import Method, MethodInfo, Setting

SOURCE = "YanzuoLu/CFLD@f2ea2a7"

RELEASED = Setting(
    "as_released", resolution=(512, 512), steps=50, evals_per_step=3, batched_cfg=True, precision="fp16",
    scheduler="ddpm",
    notes="INPUT.GT.IMG_SIZE 512x512 generation (64x64 latent), then bicubic resize to TEST.IMG_SIZE 256x176 "
          "(fashion_256) or 512x352 (fashion_512): same cost. DDPMScheduler scaled_linear 0.00085-0.012, leading, "
          "steps_offset 1, epsilon, 50 steps (981..1). GUIDANCE_TYPE uc_down_full batched x3: "
          "uc + 2 (down - uc) + 2 (full - down). Accelerate fp16 autocast + xformers; VAE in fp16.")


@dataclass(frozen=True)
class CFLDConfig:
    """Sizes of every CFLD network (``defaults/deepfashion.py`` names in comments)."""

    resolution: tuple[int, int]  # INPUT.GT.IMG_SIZE: generated image; the latent is resolution / 8
    cond_size: tuple[int, int]  # INPUT.COND.IMG_SIZE = INPUT.POSE.IMG_SIZE (resolution / 2): sizes the Swin
    # window tables and the decoder's key/value position embedding
    # SD1.5 UNet (pretrained_models/unet/config.json)
    unet_channels: tuple[int, ...]
    unet_heads: int  # "attention_head_dim" 8 = number of heads in the SD1.5 config
    ctx_dim: int  # cross_attention_dim = DECODER_CONFIG.CTX_DIM
    # Swin backbone (COND_STAGE_CONFIG)
    swin_embed: int
    swin_depths: tuple[int, ...]
    swin_heads: tuple[int, ...]
    swin_window: int
    # appearance encoder (APPEARANCE_GUIDANCE_CONFIG): 3 blocks per Swin stage 1-3, DEPTH transformer layers each
    app_embed_dims: tuple[int, ...]  # EMBED_DIMS per stage (x3 blocks)
    app_heads: tuple[int, ...]  # HEADS per stage (x3 blocks)
    app_depth: int
    # pose encoder (POSE_GUIDANCE_CONFIG): in_channels = unet_channels[0], channels = unet_channels[:3]
    pose_channels: int  # POSE_CHANNELS: 3 RGB skeleton + 18 heatmaps
    pose_downscale: int  # DOWNSCALE_FACTOR (PixelUnshuffle)
    # perception-refined decoder (DECODER_CONFIG)
    n_ctx: int
    dec_heads: int
    dec_depth: int
    # SD VAE (pretrained_models/vae/config.json, sd-vae-ft-mse)
    vae_channels: tuple[int, ...]


FULL = CFLDConfig(
    resolution=(512, 512), cond_size=(256, 256),
    unet_channels=(320, 640, 1280, 1280), unet_heads=8, ctx_dim=768,
    swin_embed=128, swin_depths=(2, 2, 18, 2), swin_heads=(4, 8, 16, 32), swin_window=16,
    app_embed_dims=(64, 128, 256), app_heads=(2, 4, 8), app_depth=4,
    pose_channels=21, pose_downscale=4,
    n_ctx=16, dec_heads=24, dec_depth=8,
    vae_channels=(128, 256, 512, 512),
)

# CPU-friendly variant, same structure: UNet 0.4x (GroupNorm-32 compatible), Swin-B depths at 0.375x width with the
# window scaled with the image (so stages 1-2 are windowed/shifted and 3-4 global, as in the full model), HGA 0.5x,
# decoder 320-d (head dim 32 as in the full 768/24), VAE 0.5x; configured for half the released size: generation
# 256x256 (32x32 latent), conditioning 128x128.
REDUCED = CFLDConfig(
    resolution=(256, 256), cond_size=(128, 128),
    unet_channels=(128, 256, 512, 512), unet_heads=8, ctx_dim=320,
    swin_embed=48, swin_depths=(2, 2, 18, 2), swin_heads=(2, 4, 8, 16), swin_window=8,
    app_embed_dims=(32, 64, 128), app_heads=(2, 4, 8), app_depth=4,
    pose_channels=21, pose_downscale=4,
    n_ctx=16, dec_heads=10, dec_depth=8,
    vae_channels=(64, 128, 256, 256),
)

CONFIGS = {"full": FULL, "reduced": REDUCED}


# --------------------------------------------------------------------------------------------------------------
# Swin backbone
# --------------------------------------------------------------------------------------------------------------
class WindowBias(nn.Module):
    """Relative-position bias of one Swin block, for whatever window the block runs with.

    The table is built for the block's window at the configured conditioning size (``(2w-1)^2`` offsets x heads,
    as the public Swin clamps it at construction). A smaller run-time window (smaller input) reads the matching
    sub-table; a larger one reads a bicubic resize of the table (what the public ``load_pretrained`` does).
    """

    def __init__(self, heads: int, window: int, layer: nn.Module):
        super().__init__()
        self.window = window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self._layer = [layer]  # the owning SwinLayer (in a list: not a submodule); it sets window_size per call
        self._index: dict = {}

    def _offsets(self, window: int, base: int, device) -> torch.Tensor:
        """(w*w, w*w) index into a (2*base-1)^2 offset table for every query/key pair of a w x w window."""
        key = (window, base, device)
        if key not in self._index:
            rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
            rows, cols = rows.flatten(), cols.flatten()
            d_row, d_col = rows[:, None] - rows[None, :], cols[:, None] - cols[None, :]
            self._index[key] = ((d_row + base - 1) * (2 * base - 1) + d_col + base - 1).to(device)
        return self._index[key]

    def forward(self) -> torch.Tensor:
        window, table = int(self._layer[0].window_size), self.relative_position_bias_table
        base = max(window, self.window)
        if window > self.window:
            heads, side = table.shape[1], 2 * self.window - 1
            grid = table.t().reshape(1, heads, side, side)
            table = F.interpolate(grid, size=(2 * window - 1,) * 2, mode="bicubic").reshape(heads, -1).t()
        bias = table[self._offsets(window, base, table.device)]  # (w*w, w*w, heads)
        return bias.permute(2, 0, 1).unsqueeze(0)  # (1, heads, w*w, w*w)


class SwinBackbone(nn.Module):
    """Swin-B (``models/swin_transformer.py``): returns each stage's tokens *before* patch merging.

    Input (B, 3, Hc, Wc) -> [(B, C*2^i, Hc/4/2^i, Wc/4/2^i) for i in 0..3] (feature maps, channels first).
    """

    def __init__(self, cfg: CFLDConfig):
        super().__init__()
        from transformers import SwinConfig, SwinModel

        self.window = cfg.swin_window
        config = SwinConfig(
            image_size=list(cfg.cond_size), patch_size=4, num_channels=3, embed_dim=cfg.swin_embed,
            depths=list(cfg.swin_depths), num_heads=list(cfg.swin_heads), window_size=cfg.swin_window,
            mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.2, hidden_act="gelu", layer_norm_eps=1e-5)
        config._attn_implementation = "eager"  # explicit matmuls, as the public Swin
        self.model = SwinModel(config, add_pooling_layer=False)
        self.model.layernorm = nn.Identity()  # COND_STAGE_CONFIG.LAST_NORM False
        # The public Swin clamps the window to the stage resolution at construction (stages 3-4 at 256 px);
        # transformers builds every table for the unclamped window and clamps only at run time.
        for layer in self.layers():
            window = min(self.window, *layer.input_resolution)
            layer.attention.relative_position_bias = WindowBias(layer.attention.num_attention_heads, window, layer)

    def layers(self):
        return [layer for stage in self.model.encoder.layers for layer in stage.blocks]

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        # transformers clamps window/shift in place for small stages; restore the configured ones for this input
        for stage in self.model.encoder.layers:
            for i, layer in enumerate(stage.blocks):
                layer.window_size, layer.shift_size = self.window, 0 if i % 2 == 0 else self.window // 2
        out = self.model(image, output_hidden_states=True, output_hidden_states_before_downsampling=True)
        return list(out.reshaped_hidden_states[1:])  # drop the patch-embedding stem


# --------------------------------------------------------------------------------------------------------------
# Appearance encoder (hybrid-granularity attention)
# --------------------------------------------------------------------------------------------------------------
class AppearanceEncoder(nn.Module):
    """HGA (``models/appearance_encoder.py``): 9 small transformers on Swin stages 1-3 (3 per stage).

    Block k reads Swin stage ``k // 3`` (B, Cs, h, w), projects it with a 1x1 conv to its embed dim, runs ``depth``
    self-attention-only ``BasicTransformerBlock`` layers (``double_self_attention``) on the h*w tokens and projects
    to the UNet width of up-attention block ``11 - k`` with a 1x1 conv. Output: ``{11 - k: (B, h*w, C_unet)}``,
    added to that block's cross-attention queries (TO_QUERIES True).
    """

    def __init__(self, cfg: CFLDConfig):
        super().__init__()
        swin_dims = [cfg.swin_embed * 2**i for i in range(3)]  # INNER_DIMS
        unet_dims = list(cfg.unet_channels[:3])  # CTX_DIMS: blocks 11..9 -> 320, 8..6 -> 640, 5..3 -> 1280
        self.stage_of = [k // 3 for k in range(9)]
        self.block_index = [11 - k for k in range(9)]  # ATTN_RESIDUAL_BLOCK_IDX
        self.conv_in = nn.ModuleList()
        self.blocks = nn.ModuleList()
        self.conv_out = nn.ModuleList()
        for k in range(9):
            s = self.stage_of[k]
            dim, heads = cfg.app_embed_dims[s], cfg.app_heads[s]
            self.conv_in.append(nn.Conv2d(swin_dims[s], dim, kernel_size=1))
            self.blocks.append(nn.Sequential(*[
                BasicTransformerBlock(dim, heads, dim // heads, double_self_attention=True)
                for _ in range(cfg.app_depth)]))
            self.conv_out.append(nn.Conv2d(dim, unet_dims[s], kernel_size=1))

    def forward(self, features: list[torch.Tensor]) -> dict[int, torch.Tensor]:
        residuals = {}
        for k, (conv_in, block, conv_out) in enumerate(zip(self.conv_in, self.blocks, self.conv_out)):
            x = conv_in(features[self.stage_of[k]])  # (B, dim, h, w)
            b, c, h, w = x.shape
            x = block(x.flatten(2).transpose(1, 2))  # (B, h*w, dim)
            x = conv_out(x.transpose(1, 2).reshape(b, c, h, w))  # (B, C_unet, h, w)
            residuals[self.block_index[k]] = x.flatten(2).transpose(1, 2)  # (B, h*w, C_unet)
        return residuals


# --------------------------------------------------------------------------------------------------------------
# Pose encoder (adapter)
# --------------------------------------------------------------------------------------------------------------
class PoseEncoder(nn.Module):
    """``models/pose_encoder.py``: PixelUnshuffle, 1x1 conv, then ResnetBlock2D (no time embedding) per UNet level
    with 2x average-pool downsampling between levels.

    (B, 21, Hc, Wc) -> [(B, C0, h, w), (B, C1, h/2, w/2), (B, C2, h/4, w/4)], h = Hc / 4 = latent height;
    added to the outputs of the UNet's three cross-attention down blocks (T2I-adapter "intrablock" residuals).
    """

    def __init__(self, cfg: CFLDConfig):
        super().__init__()
        channels = list(cfg.unet_channels[:3])
        self.unshuffle = nn.PixelUnshuffle(cfg.pose_downscale)
        self.conv_in = nn.Conv2d(cfg.pose_channels * cfg.pose_downscale**2, channels[0], kernel_size=1)
        self.resnets = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for i, out_ch in enumerate(channels):
            in_ch = channels[0] if i == 0 else channels[i - 1]
            self.resnets.append(ResnetBlock2D(in_channels=in_ch, out_channels=out_ch, temb_channels=None))
            last = i == len(channels) - 1
            self.downsamplers.append(
                nn.Identity() if last else Downsample2D(out_ch, use_conv=False, out_channels=out_ch, padding=1,
                                                        name="op"))

    def forward(self, pose: torch.Tensor) -> list[torch.Tensor]:
        x = self.conv_in(self.unshuffle(pose))  # (B, C0, Hc/4, Wc/4)
        features = []
        for resnet, down in zip(self.resnets, self.downsamplers):
            x = resnet(x, temb=None)
            features.append(x)
            x = down(x)
        return features


# --------------------------------------------------------------------------------------------------------------
# Perception-refined decoder
# --------------------------------------------------------------------------------------------------------------
class CrossAttnFirstBlock(BasicTransformerBlock):
    """``BasicTransformerBlock`` run as cross-attention -> self-attention -> feed-forward, with the query positional
    embedding added to the residual stream before each attention (``models/decoder.py``)."""

    def forward(self, x: torch.Tensor, query_pos: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # x, query_pos: (B, n_ctx, ctx_dim); context: (B, S, C_swin)
        x = x + query_pos
        x = x + self.attn2(self.norm2(x), encoder_hidden_states=context)
        x = x + query_pos
        x = x + self.attn1(self.norm1(x))
        return x + self.ff(self.norm3(x))


class PerceptionDecoder(nn.Module):
    """``models/decoder.py`` (POSE_QUERY False, LAST_NORM False): ``n_ctx`` learnable queries cross-attend to the
    last Swin stage (plus a learnable key/value positional embedding) -> (B, n_ctx, ctx_dim) prompt tokens."""

    def __init__(self, cfg: CFLDConfig):
        super().__init__()
        kv_dim = cfg.swin_embed * 2 ** (len(cfg.swin_depths) - 1)
        self.kv_grid = (cfg.cond_size[0] // 32, cfg.cond_size[1] // 32)  # last Swin stage at the configured size
        self.query_feat = nn.Parameter(torch.randn(cfg.n_ctx, cfg.ctx_dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(cfg.n_ctx, cfg.ctx_dim) * 0.02)
        self.kv_pos_embed = nn.Parameter(torch.randn(1, self.kv_grid[0] * self.kv_grid[1], kv_dim) * 0.02)
        self.blocks = nn.ModuleList([
            CrossAttnFirstBlock(cfg.ctx_dim, cfg.dec_heads, cfg.ctx_dim // cfg.dec_heads, cross_attention_dim=kv_dim)
            for _ in range(cfg.dec_depth)])

    def kv_positions(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1, h*w, C3) key/value positional embedding, bicubic-resized from the configured grid when it differs
        (as the public ``load_pretrained`` resizes position embeddings)."""
        if tuple(grid) == self.kv_grid:
            return self.kv_pos_embed
        pos = self.kv_pos_embed.transpose(1, 2).reshape(1, -1, *self.kv_grid)
        return F.interpolate(pos, size=tuple(grid), mode="bicubic").flatten(2).transpose(1, 2)

    def forward(self, last_stage: torch.Tensor) -> torch.Tensor:
        b = last_stage.shape[0]
        kv = last_stage.flatten(2).transpose(1, 2) + self.kv_positions(last_stage.shape[-2:])  # (B, h*w, C3)
        # repeat, not expand: a no_grad view of a parameter passed to a module trips FlopCounterMode's module tracker
        x = self.query_feat.repeat(b, 1, 1)  # (B, n_ctx, ctx_dim)
        pos = self.pos_embed.repeat(b, 1, 1)
        for block in self.blocks:
            x = block(x, pos, kv)
        return x


# --------------------------------------------------------------------------------------------------------------
# UNet: appearance residuals on the up-block cross-attention queries
# --------------------------------------------------------------------------------------------------------------
class _ResidualSlot:
    """Holds the up-block query residuals ``{block_idx: (N, tokens, C)}`` for the current UNet call."""

    residuals: dict[int, torch.Tensor] | None = None


class QueryResidualAttnProcessor:
    """SDPA cross-attention that adds ``slot.residuals[block_idx]`` to the queries (``ResidualXFormersAttnProcessor``
    with ``block_{i}_cross_attn_q`` keys in ``models/unet.py``). Used on the up-block ``attn2`` modules only."""

    def __init__(self, slot: _ResidualSlot, block_idx: int):
        self.slot, self.block_idx = slot, block_idx

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        # hidden_states: (N, L, C) image tokens; encoder_hidden_states: (N, S, ctx_dim) prompt tokens
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)  # (N, L, C)
        residual = None if self.slot.residuals is None else self.slot.residuals.get(self.block_idx)
        if residual is not None:
            query = query + residual
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        key, value = attn.to_k(context), attn.to_v(context)  # (N, S, C)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        out = F.scaled_dot_product_attention(query, key, value)  # (N, heads, L, head_dim)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def build_unet(cfg: CFLDConfig) -> UNet2DConditionModel:
    """SD1.5 ``UNet2DConditionModel`` (``pretrained_models/unet/config.json``) at ``cfg`` widths."""
    return UNet2DConditionModel(
        sample_size=cfg.resolution[0] // 8, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=cfg.unet_channels, attention_head_dim=cfg.unet_heads, cross_attention_dim=cfg.ctx_dim,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
        act_fn="silu", mid_block_scale_factor=1)


def build_vae(cfg: CFLDConfig) -> AutoencoderKL:
    """SD VAE (``pretrained_models/vae/config.json``, sd-vae-ft-mse) at ``cfg`` widths."""
    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=cfg.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        norm_num_groups=32, act_fn="silu", sample_size=cfg.resolution[0], scaling_factor=0.18215)


def build_scheduler() -> DDPMScheduler:
    """``DDPMScheduler`` from ``pretrained_models/scheduler/scheduler_config.json``."""
    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, prediction_type="epsilon", steps_offset=1, timestep_spacing="leading")


# --------------------------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------------------------
class CFLD(Method):
    """CFLD inference: conditioning stack once per image, 50 DDPM steps of one UNet call on the batch x3
    (uc / down / full), SD VAE decode.

    ``size``: "full" (released configuration, :data:`FULL`) or "reduced" (:data:`REDUCED`, CPU-friendly).
    Build inside ``with torch.device("meta"):`` for shapes only (parameter and FLOP counts). Generation runs at
    ``setting.resolution`` (multiples of 32) with conditioning images at half that size, the ratio of the released
    INPUT.GT (512) and INPUT.COND/POSE (256) sizes, so that the appearance residuals match the UNet's token grids.
    """

    def __init__(self, size: str = "full"):
        super().__init__()
        self.size = size
        self.config = cfg = CONFIGS[size]
        self.info = MethodInfo(
            name="CFLD", paper="CVPR 2024", source=SOURCE, released=RELEASED,
            expected_params={"unet": 859.5, "swin": 87.0, "appearance_encoder": 22.5, "pose_encoder": 30.6,
                             "decoder": 97.7},
            expected_tflops={"unet_64x64_ctx16": 0.798})
        self.swin = SwinBackbone(cfg)
        self.appearance_encoder = AppearanceEncoder(cfg)
        self.pose_encoder = PoseEncoder(cfg)
        self.decoder = PerceptionDecoder(cfg)
        self.null_prompt = nn.Parameter(torch.randn(1, cfg.n_ctx, cfg.ctx_dim))  # build_model.learnable_vector
        self.unet = build_unet(cfg)
        self.vae = build_vae(cfg)
        self.scheduler = build_scheduler()
        self._slot = _ResidualSlot()
        for i, block in enumerate(self.unet.up_blocks):
            for j, transformer in enumerate(getattr(block, "attentions", None) or []):
                block_idx = i * len(block.resnets) + j  # 3..11 (up block 0 has no attention)
                for layer in transformer.transformer_blocks:
                    layer.attn2.set_processor(QueryResidualAttnProcessor(self._slot, block_idx))
        self.eval()

    # -- interface -------------------------------------------------------------------------------------------
    def param_groups(self) -> dict[str, nn.Module]:
        return {"unet": self.unet, "swin": self.swin, "appearance_encoder": self.appearance_encoder,
                "pose_encoder": self.pose_encoder, "decoder": self.decoder, "vae": self.vae}

    def example_inputs(self, batch: int, setting: Setting, device, dtype, generator=None) -> dict:
        """``source``: (B, 3, Hc, Wc) in [-1, 1] (Swin input, ``img_cond_from``); ``pose``: (B, 21, Hc, Wc) target
        pose map (3 RGB skeleton channels + 18 heatmaps, ``pose_img_to``); Hc, Wc = ``setting.resolution`` / 2."""
        self._check(setting)
        h, w = setting.resolution[0] // 2, setting.resolution[1] // 2

        def rand(*shape):
            if generator is not None:
                return torch.rand(shape, generator=generator).to(device, dtype)
            return torch.rand(shape, device=device, dtype=dtype)

        return {"source": rand(batch, 3, h, w) * 2 - 1, "pose": rand(batch, self.config.pose_channels, h, w)}

    def encode(self, source: torch.Tensor, pose: torch.Tensor):
        """Conditioning stack (``build_model.forward`` at test time).

        Returns prompt (B, n_ctx, ctx_dim), pose residuals [(B, C_i, h_i, w_i)] x3 for the down blocks and
        appearance residuals {block_idx: (B, tokens, C)} for the up-block cross-attention queries.
        """
        features = self.swin(source)  # 4 x (B, C_s, h_s, w_s)
        up_residuals = self.appearance_encoder(features)
        down_residuals = self.pose_encoder(pose)
        prompt = self.decoder(features[-1])
        return prompt, down_residuals, up_residuals

    def denoise(self, latents, timestep, context, down_residuals, up_residuals) -> torch.Tensor:
        """One ``ResidualUNet2DConditionModel`` forward: latents (N, 4, h, w), context (N, n_ctx, ctx_dim), pose
        residuals [(N, C_i, h_i, w_i)] x3, appearance residuals {idx: (N, tokens, C)} -> eps (N, 4, h, w)."""
        self._slot.residuals = up_residuals
        try:
            return self.unet(latents, timestep, encoder_hidden_states=context,
                             down_intrablock_additional_residuals=list(down_residuals)).sample  # list: popped
        finally:
            self._slot.residuals = None

    @torch.no_grad()
    def generate(self, inputs: dict, setting: Setting, meter: Meter, generator=None) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] at ``setting.resolution``, or at ``inputs["output_size"]`` (bicubic,
        antialiased, as ``pose_transfer_test.py`` resizes to ``TEST.IMG_SIZE`` for the metrics) when given."""
        self._check(setting)
        source, pose = inputs["source"], inputs["pose"]
        batch, device, dtype = source.shape[0], source.device, source.dtype
        with meter.stage("encoders"):
            prompt, down, up = self.encode(source, pose)
            null = self.null_prompt.to(dtype).expand(batch, -1, -1)
            # uc_down_full, batched x3: uc = null prompt, no residuals; down = null prompt + pose residuals;
            # full = prompt + pose + appearance residuals.
            context = torch.cat([null, null, prompt])  # (3B, n_ctx, ctx_dim)
            down = [torch.cat([torch.zeros_like(r), r, r]) for r in down]
            up = {k: torch.cat([torch.zeros_like(v), torch.zeros_like(v), v]) for k, v in up.items()}
        shape = (batch, 4, setting.resolution[0] // 8, setting.resolution[1] // 8)
        latents = (torch.randn(shape, generator=generator).to(device, dtype) if generator is not None
                   else torch.randn(shape, device=device, dtype=dtype))
        scheduler = self.scheduler
        scheduler.set_timesteps(setting.steps)
        for t in scheduler.timesteps[: meter.runs(setting.steps)]:
            with meter.stage("denoiser", repeat=setting.steps):
                model_input = scheduler.scale_model_input(torch.cat([latents] * 3), t)  # (3B, 4, h, w)
                uc, down_eps, full = self.denoise(model_input, t, context, down, up).chunk(3)
                eps = uc + 2.0 * (down_eps - uc) + 2.0 * (full - down_eps)  # DOWN_BLOCK / FULL_GUIDANCE_SCALE 2.0
                latents = scheduler.step(eps, t, latents, generator=generator).prev_sample
        with meter.stage("vae_decode"):
            images = self.vae.decode(latents / self.vae.config.scaling_factor).sample
            images = (images * 0.5 + 0.5).clamp(0, 1)
            if inputs.get("output_size") is not None:
                images = F.interpolate(images, tuple(inputs["output_size"]), mode="bicubic", antialias=True)
        return images

    def flop_checks(self, device="meta") -> dict[str, float]:
        """UNet forward FLOPs per sample at the configured latent (64x64 for "full", 32x32 for "reduced") with
        ``n_ctx`` prompt tokens, pose and appearance residuals included. Counted on a meta twin when this model
        lives elsewhere."""
        net = self._on(device)
        cfg, dev = net.config, torch.device(device)
        with torch.no_grad():
            prompt, down, up = net.encode(*net._zero_conditions(dev))
        latents = torch.zeros(1, 4, cfg.resolution[0] // 8, cfg.resolution[1] // 8, device=dev)
        t = torch.tensor(981)
        flops = count_flops(net.denoise, latents, t, prompt, down, up)
        return {"unet_64x64_ctx16": flops / 1e12}

    def conditioning_flops(self, device="meta") -> dict[str, float]:
        """TFLOP per image of each conditioning network (once per generated image)."""
        net = self._on(device)
        source, pose = net._zero_conditions(torch.device(device))
        with torch.no_grad():
            features = net.swin(source)
        return {
            "swin": count_flops(net.swin, source) / 1e12,
            "appearance_encoder": count_flops(net.appearance_encoder, features) / 1e12,
            "pose_encoder": count_flops(net.pose_encoder, pose) / 1e12,
            "decoder": count_flops(net.decoder, features[-1]) / 1e12,
        }

    # -- helpers ---------------------------------------------------------------------------------------------
    @staticmethod
    def _check(setting: Setting) -> None:
        # latent / 4 must be whole: the pose encoder's pooled features meet the UNet's down blocks 0-2
        if any(r % 32 for r in setting.resolution):
            raise ValueError(f"CFLD generates at multiples of 32 px; got setting.resolution={setting.resolution}")

    def _zero_conditions(self, device):
        h, w = self.config.cond_size
        return (torch.zeros(1, 3, h, w, device=device), torch.zeros(1, self.config.pose_channels, h, w, device=device))

    def _on(self, device) -> CFLD:
        if next(self.parameters()).device == torch.device(device):
            return self
        with torch.device(device):
            return type(self)(self.size)
