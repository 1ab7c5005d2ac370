"""Pose encoder F_P: a ControlNet-style conditioning embedding (official ``PoseGuider``).

conv_in 3->c0, SiLU, then per channel pair a 3x3 conv c->c, SiLU, a 3x3 stride-2 conv c->c', SiLU, and a
zero-initialised conv_out to the UNet's first block width. Three stride-2 convs: the output is at 1/8 of
the pose canvas, i.e. exactly on the latent grid. Input: the RGB pose canvas in [0, 1] (not normalised).
This is diffusers' ``ControlNetConditioningEmbedding``; keys equal the official ones.
"""

from __future__ import annotations

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
from diffusers.models.modeling_utils import ModelMixin


class PoseGuider(ControlNetConditioningEmbedding, ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        conditioning_embedding_channels: int = 320,
        conditioning_channels: int = 3,
        block_out_channels: tuple[int, ...] = (16, 32, 96, 256),
    ):
        super().__init__(conditioning_embedding_channels, conditioning_channels, tuple(block_out_channels))
