"""UNet stages of the IMAGPose denoiser, built from diffusers blocks.

Each layer of a stage runs ``resnet -> spatial transformer (if the stage has attention) -> CVA (if enabled)``,
exactly the official order (``unet_3d_blocks.py``). Resnets, spatial self/cross-attention and the samplers
run on the whole canvas as one image (the paper's "global" attention); only the CVA splits it into views.
Module names match the official state-dict keys: ``resnets.N``, ``attentions.N``, ``motion_modules.N``,
``downsamplers.0``, ``upsamplers.0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.upsampling import Upsample2D
from torch import nn

from .cva import CrossViewAttention


@dataclass(frozen=True)
class StageSpec:
    """Everything a stage needs that is shared across the UNet."""

    temb_channels: int
    norm_groups: int
    norm_eps: float
    act_fn: str
    cross_attention_dim: int
    use_linear_projection: bool
    upcast_attention: bool
    cva_kwargs: dict


def _resnet(spec: StageSpec, in_channels: int, out_channels: int, output_scale_factor: float = 1.0) -> ResnetBlock2D:
    return ResnetBlock2D(
        in_channels=in_channels, out_channels=out_channels, temb_channels=spec.temb_channels,
        groups=spec.norm_groups, eps=spec.norm_eps, non_linearity=spec.act_fn,
        output_scale_factor=output_scale_factor,
    )


def _transformer(spec: StageSpec, channels: int, num_heads: int) -> Transformer2DModel:
    return Transformer2DModel(
        num_attention_heads=num_heads, attention_head_dim=channels // num_heads, in_channels=channels,
        num_layers=1, cross_attention_dim=spec.cross_attention_dim, norm_num_groups=spec.norm_groups,
        use_linear_projection=spec.use_linear_projection, upcast_attention=spec.upcast_attention,
    )


def _cva_list(spec: StageSpec, channels: int, count: int, enabled: bool) -> nn.ModuleList | None:
    if not enabled:
        return None
    return nn.ModuleList([CrossViewAttention(channels, **spec.cva_kwargs) for _ in range(count)])


class Stage(nn.Module):
    """A UNet stage; with ``gradient_checkpointing`` (set by ``IMAGPoseUNet.enable_gradient_checkpointing``) its
    resnets and CVA modules recompute their activations in the backward pass. The spatial transformers
    checkpoint themselves (diffusers' ``Transformer2DModel`` carries the same switch)."""

    def __init__(self):
        super().__init__()
        self.gradient_checkpointing = False

    def _call(self, module: nn.Module, *args):
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(module, *args)
        return module(*args)

    def _layer(self, resnet, attention, cva, hidden, temb, context, grid):
        hidden = self._call(resnet, hidden, temb)
        if attention is not None:
            hidden = attention(hidden, encoder_hidden_states=context, return_dict=False)[0]
        if cva is not None:
            hidden = self._call(cva, hidden, grid)
        return hidden


class DownStage(Stage):
    """``CrossAttnDownBlock`` (with_attention) or ``DownBlock``; returns (hidden, skip states)."""

    def __init__(self, spec: StageSpec, in_channels: int, out_channels: int, num_layers: int, num_heads: int,
                 with_attention: bool, with_cva: bool, add_downsample: bool, downsample_padding: int):
        super().__init__()
        self.resnets = nn.ModuleList(
            [_resnet(spec, in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)]
        )
        self.attentions = (
            nn.ModuleList([_transformer(spec, out_channels, num_heads) for _ in range(num_layers)])
            if with_attention else None
        )
        self.motion_modules = _cva_list(spec, out_channels, num_layers, with_cva)
        self.downsamplers = (
            nn.ModuleList([Downsample2D(out_channels, use_conv=True, padding=downsample_padding, name="op")])
            if add_downsample else None
        )

    @property
    def num_skips(self) -> int:
        """Skip states this stage produces: one per layer, plus the downsampler's output."""
        return len(self.resnets) + (self.downsamplers is not None)

    def forward(self, hidden, temb, context, grid, num_skips=None):
        """``num_skips``: stop once that many skip states exist (DeepCache's shallow path); None runs the stage."""
        limit = self.num_skips if num_skips is None else num_skips
        skips = ()
        for i, resnet in enumerate(self.resnets):
            if len(skips) == limit:
                return hidden, skips
            hidden = self._layer(resnet, self.attentions[i] if self.attentions else None,
                                 self.motion_modules[i] if self.motion_modules else None, hidden, temb, context, grid)
            skips += (hidden,)
        if self.downsamplers is not None and len(skips) < limit:
            hidden = self.downsamplers[0](hidden)
            skips += (hidden,)
        return hidden, skips


class MidStage(Stage):
    """``resnet -> [attention -> CVA -> resnet] x num_layers`` (official UNetMidBlock3DCrossAttn)."""

    def __init__(self, spec: StageSpec, channels: int, num_heads: int, with_cva: bool, output_scale_factor: float,
                 num_layers: int = 1):
        super().__init__()
        self.resnets = nn.ModuleList(
            [_resnet(spec, channels, channels, output_scale_factor) for _ in range(num_layers + 1)]
        )
        self.attentions = nn.ModuleList([_transformer(spec, channels, num_heads) for _ in range(num_layers)])
        self.motion_modules = _cva_list(spec, channels, num_layers, with_cva)

    def forward(self, hidden, temb, context, grid):
        hidden = self._call(self.resnets[0], hidden, temb)
        for i, attention in enumerate(self.attentions):
            hidden = attention(hidden, encoder_hidden_states=context, return_dict=False)[0]
            if self.motion_modules is not None:
                hidden = self._call(self.motion_modules[i], hidden, grid)
            hidden = self._call(self.resnets[i + 1], hidden, temb)
        return hidden


class UpStage(Stage):
    """``CrossAttnUpBlock`` (with_attention) or ``UpBlock``; each layer first concatenates a skip state."""

    def __init__(self, spec: StageSpec, in_channels: int, prev_channels: int, out_channels: int, num_layers: int,
                 num_heads: int, with_attention: bool, with_cva: bool, add_upsample: bool):
        super().__init__()
        resnets = []
        for i in range(num_layers):
            skip_channels = in_channels if i == num_layers - 1 else out_channels
            resnet_in = prev_channels if i == 0 else out_channels
            resnets.append(_resnet(spec, resnet_in + skip_channels, out_channels))
        self.resnets = nn.ModuleList(resnets)
        self.attentions = (
            nn.ModuleList([_transformer(spec, out_channels, num_heads) for _ in range(num_layers)])
            if with_attention else None
        )
        self.motion_modules = _cva_list(spec, out_channels, num_layers, with_cva)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True)]) if add_upsample else None

    def forward(self, hidden, skips, temb, context, grid, upsample_size=None, first_layer=0, capture_layer=None):
        """``skips``: the skip states of layers ``first_layer..``, deepest last. DeepCache: ``first_layer`` > 0 starts
        at that layer (``hidden`` is then the cached input of that layer); ``capture_layer`` also returns the input
        of that layer, as ``(hidden, captured)``."""
        captured = None
        for i in range(first_layer, len(self.resnets)):
            if i == capture_layer:
                captured = hidden
            hidden = torch.cat([hidden, skips[first_layer - 1 - i]], dim=1)  # hidden, then the skip (official order)
            hidden = self._layer(self.resnets[i], self.attentions[i] if self.attentions else None,
                                 self.motion_modules[i] if self.motion_modules else None, hidden, temb, context, grid)
        if self.upsamplers is not None:
            hidden = self.upsamplers[0](hidden, upsample_size)
        return hidden if capture_layer is None else (hidden, captured)
