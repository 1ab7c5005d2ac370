"""The IMAGPose denoising UNet: SD1.5 layout, 9-channel ILC input, pose injection, CVA after every block layer.

Input channels, in the official order (``pipeline_pose2img.py``)::

    sample = cat([x_t (4), flag (1), masked-canvas latent (4)], dim=1)        (B, 9, H, W), H, W = canvas / 8

``pose_features`` (the PoseGuider output, (B, C0, H, W)) are added right after ``conv_in`` - the only pose
injection point. ``encoder_hidden_states`` are the FLC context tokens ``cat([DINOv2 tokens, VAE-patch tokens])``.

State-dict keys and shapes equal the official ``UNet3DConditionModel``'s (frame axis dropped: the canvas is
one image), so official checkpoints load with a strict map (``imagpose.convert``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .attention import get_cva_backend
from .cva import CrossViewAttention
from .unet_blocks import DownStage, MidStage, StageSpec, UpStage

DOWN_BLOCK_TYPES = {"CrossAttnDownBlock": True, "DownBlock": False}  # name -> has spatial attention
UP_BLOCK_TYPES = {"CrossAttnUpBlock": True, "UpBlock": False}


@dataclass
class UNetOutput(BaseOutput):
    sample: torch.Tensor


class IMAGPoseUNet(ModelMixin, ConfigMixin):
    """Denoiser epsilon_theta(x_t, t, F_C, F_I, F_P) of the paper; v-prediction in the official training.

    Config notes: ``num_attention_heads`` is the official ``attention_head_dim`` (diffusers' historical name
    for the head *count*). ``cva_down_blocks`` / ``cva_mid_block`` / ``cva_up_blocks`` say which stages carry
    CVA modules (all of them in IMAGPose). ``final_norm=False`` reproduces pre-PR#10 stage-1 checkpoints,
    whose forward skipped ``conv_norm_out`` + SiLU. ``default_grid`` is the view grid (rows, cols) used when
    ``forward`` is not given one. ``enable_gradient_checkpointing()`` (diffusers) recomputes the activations of
    every resnet, spatial transformer and CVA module in the backward pass (training only; same gradients).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int = 64,
        in_channels: int = 9,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = ("CrossAttnDownBlock",) * 3 + ("DownBlock",),
        up_block_types: tuple[str, ...] = ("UpBlock",) + ("CrossAttnUpBlock",) * 3,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1.0,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 768,
        num_attention_heads: int | tuple[int, ...] = 8,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        center_input_sample: bool = False,
        final_norm: bool = True,
        cva_down_blocks: tuple[bool, ...] = (True, True, True, True),
        cva_mid_block: bool = True,
        cva_up_blocks: tuple[bool, ...] = (True, True, True, True),
        cva_num_heads: int = 8,
        cva_num_layers: int = 1,
        cva_attention_blocks: int = 2,
        cva_head_dim_div: int = 1,
        cva_max_views: int = 32,
        cva_norm_groups: int = 32,
        cva_position_encoding: bool = True,
        default_grid: tuple[int, int] = (2, 2),
    ):
        super().__init__()
        levels = len(block_out_channels)
        for name, value in (("down_block_types", down_block_types), ("up_block_types", up_block_types),
                            ("cva_down_blocks", cva_down_blocks), ("cva_up_blocks", cva_up_blocks)):
            if len(value) != levels:
                raise ValueError(f"{name} has {len(value)} entries but block_out_channels has {levels}.")
        unknown = [t for t in down_block_types if t not in DOWN_BLOCK_TYPES] + [
            t for t in up_block_types if t not in UP_BLOCK_TYPES]
        if unknown:
            raise ValueError(f"Unknown block types {unknown}; use {list(DOWN_BLOCK_TYPES) + list(UP_BLOCK_TYPES)}.")
        heads = (num_attention_heads,) * levels if isinstance(num_attention_heads, int) else tuple(num_attention_heads)
        time_embed_dim = block_out_channels[0] * 4
        spec = StageSpec(
            temb_channels=time_embed_dim, norm_groups=norm_num_groups, norm_eps=norm_eps, act_fn=act_fn,
            cross_attention_dim=cross_attention_dim, use_linear_projection=use_linear_projection,
            upcast_attention=upcast_attention,
            cva_kwargs=dict(num_heads=cva_num_heads, num_layers=cva_num_layers,
                            num_attention_blocks=cva_attention_blocks, head_dim_div=cva_head_dim_div,
                            max_views=cva_max_views, norm_groups=cva_norm_groups,
                            position_encoding=cva_position_encoding),
        )

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim)

        self.down_blocks = nn.ModuleList()
        out_ch = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[i]
            self.down_blocks.append(DownStage(
                spec, in_ch, out_ch, layers_per_block, heads[i], DOWN_BLOCK_TYPES[block_type], cva_down_blocks[i],
                add_downsample=i < levels - 1, downsample_padding=downsample_padding,
            ))

        self.mid_block = MidStage(spec, block_out_channels[-1], heads[-1], cva_mid_block, mid_block_scale_factor)

        self.up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(block_out_channels))
        reversed_heads = list(reversed(heads))
        out_ch = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            prev_ch, out_ch = out_ch, reversed_channels[i]
            in_ch = reversed_channels[min(i + 1, levels - 1)]
            self.up_blocks.append(UpStage(
                spec, in_ch, prev_ch, out_ch, layers_per_block + 1, reversed_heads[i], UP_BLOCK_TYPES[block_type],
                cva_up_blocks[i], add_upsample=i < levels - 1,
            ))

        self.conv_norm_out = (
            nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=norm_eps) if final_norm else None
        )
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)

    # ------------------------------------------------------------------ helpers
    def cva_modules(self) -> list[tuple[str, CrossViewAttention]]:
        return [(name, m) for name, m in self.named_modules() if isinstance(m, CrossViewAttention)]

    def set_cva_backend(self, backend: str) -> None:
        """Run every CVA module through the registered CVA backend of that name (``models.attention``)."""
        get_cva_backend(backend)  # fail early on an unknown name, also in a UNet without CVA modules
        for _, module in self.cva_modules():
            module.set_backend(backend)

    # ------------------------------------------------------------------ DeepCache
    @property
    def num_skip_branches(self) -> int:
        """Skip connections between the down and the up path (conv_in's output and every down layer and
        downsampler): DeepCache branches ``0..num_skip_branches - 1``, 0 the shallowest."""
        return 1 + sum(block.num_skips for block in self.down_blocks)

    def deepcache_feature(self, branch: int) -> tuple[int, int]:
        """(channels, downscale from the latent canvas) of the feature DeepCache caches for ``branch``: the input
        of the up layer that consumes skip ``branch`` (see :meth:`forward_deepcache_full`)."""
        layers = len(self.up_blocks[0].resnets)
        block, layer = divmod(self.num_skip_branches - 1 - branch, layers)
        channels = list(reversed(self.config.block_out_channels))
        width = channels[max(block - 1, 0)] if layer == 0 else channels[block]  # the previous block's output
        return width, 2 ** (len(channels) - 1 - block)

    def forward_deepcache_full(self, sample, timestep, encoder_hidden_states, pose_features, grid,
                               branch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole UNet (a DeepCache full step): ``(prediction, deep feature)``.

        The up layers run in order; the one that consumes skip ``branch`` (its skip counted from the shallowest,
        conv_in's output = 0) is where the shallow path rejoins the deep one. The deep feature is that layer's
        input (B, C, H / 2**k, W / 2**k): the output of every deeper layer, the mid block and the down layers
        beyond skip ``branch``, CVA modules included (each layer ends with its CVA module).
        """
        return self._run(sample, timestep, encoder_hidden_states, pose_features, grid, branch)

    def forward_deepcache_shallow(self, sample, timestep, encoder_hidden_states, pose_features, deep_feature, grid,
                                  branch: int) -> torch.Tensor:
        """A DeepCache cached step: conv_in, the down layers that produce skips ``1..branch`` (with their CVA
        modules), the up layers from the one that consumes skip ``branch`` to the last (with theirs), conv_out;
        ``deep_feature`` (from :meth:`forward_deepcache_full` at an earlier step) stands in for everything deeper.
        The mid block and every deeper layer (their CVA modules included) do not run."""
        return self._run(sample, timestep, encoder_hidden_states, pose_features, grid, branch, deep_feature)[0]

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        pose_features: torch.Tensor | None = None,
        grid: tuple[int, int] | None = None,
        return_dict: bool = True,
    ) -> UNetOutput | tuple[torch.Tensor]:
        """
        Args:
            sample: (B, 9, H, W) ``cat([x_t, flag, masked latent])`` on the latent canvas.
            timestep: scalar, (1,) or (B,) diffusion timesteps.
            encoder_hidden_states: (B, N_ctx, cross_attention_dim) context tokens.
            pose_features: (B, block_out_channels[0], H, W) PoseGuider output, added after ``conv_in``.
            grid: (rows, cols) of views on the canvas; ``config.default_grid`` when None.
        Returns:
            (B, out_channels, H, W) model prediction (v in the official training).
        """
        out, _ = self._run(sample, timestep, encoder_hidden_states, pose_features, grid)
        if not return_dict:
            return (out,)
        return UNetOutput(sample=out)

    def _run(self, sample, timestep, encoder_hidden_states, pose_features, grid, branch=None, deep_feature=None):
        """(prediction, deep feature or None). ``branch``: capture the deep feature of that DeepCache branch (full
        step), or with ``deep_feature`` run the shallow path only (cached step)."""
        grid = tuple(grid or self.config.default_grid)
        num_upsamplers = len(self.up_blocks) - 1
        forward_upsample_size = any(s % (2**num_upsamplers) for s in sample.shape[-2:])
        shallow = deep_feature is not None

        if self.config.center_input_sample:
            sample = 2 * sample - 1.0

        # 1. time embedding; a single timestep is embedded once and broadcast over the batch, which is
        #    cheaper and keeps every row's result independent of the batch size (batch-invariant GEMMs)
        timesteps = timestep if torch.is_tensor(timestep) else torch.tensor([timestep], device=sample.device)
        timesteps = timesteps.reshape(-1).to(sample.device)
        if timesteps.shape[0] != 1:
            timesteps = timesteps.expand(sample.shape[0])
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=sample.dtype))  # (1 or B, 4 * C0)

        # 2. input conv, then the pose features F_P (one injection point)
        hidden = self.conv_in(sample)
        if pose_features is not None:
            hidden = hidden + pose_features

        # 3. down (the shallow path stops once skips 0..branch exist)
        skips = (hidden,)
        for block in self.down_blocks:
            if shallow and len(skips) > branch:
                break
            hidden, block_skips = block(hidden, emb, encoder_hidden_states, grid,
                                        branch + 1 - len(skips) if shallow else None)
            skips += block_skips

        # 4. mid
        if not shallow:
            hidden = self.mid_block(hidden, emb, encoder_hidden_states, grid)

        # 5. up; layers counted in execution order, ``entry`` the one that consumes skip ``branch``
        entry = self.num_skip_branches - 1 - branch if branch is not None else None
        captured, first = None, 0  # ``first``: the execution index of the block's first layer
        for i, block in enumerate(self.up_blocks):
            num = len(block.resnets)
            here = entry is not None and first <= entry < first + num
            first += num
            if shallow and first <= entry:
                continue  # deeper than the branch: its output is in the deep feature
            start = entry - (first - num) if shallow and here else 0
            if shallow and here:
                hidden = deep_feature
            block_skips, skips = skips[start - num:], skips[:start - num]
            upsample_size = skips[-1].shape[2:] if forward_upsample_size and i < len(self.up_blocks) - 1 else None
            if here and not shallow:
                hidden, captured = block(hidden, block_skips, emb, encoder_hidden_states, grid, upsample_size,
                                         capture_layer=entry - (first - num))
            else:
                hidden = block(hidden, block_skips, emb, encoder_hidden_states, grid, upsample_size, first_layer=start)

        # 6. output
        if self.conv_norm_out is not None:
            hidden = self.conv_act(self.conv_norm_out(hidden))
        return self.conv_out(hidden), captured
