"""FLC low-level branch: the VAE-latent patch tokenizer (official ``PatchEmbedding``, paper Eq. 3).

``Conv2d(4, D, kernel=16, stride=16)`` on the scaled VAE latent of the reference view, flattened row-major:
(B, 4, H, W) -> (B, floor(H/16) * floor(W/16), D). No positional embedding, no norm.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class FLCTokenizer(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, in_channels: int = 4, embed_dim: int = 768, patch_size: int = 16):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def num_tokens(self, latent_height: int, latent_width: int) -> int:
        p = self.config.patch_size
        return (latent_height // p) * (latent_width // p)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, 4, H, W) -> tokens (B, N, D), N = (H // 16) * (W // 16)."""
        return self.proj(latents).flatten(2).transpose(1, 2)
