"""FLC high-level branch: DINOv2 (transformers ``Dinov2Model``) with the official position interpolation.

The official stack pins transformers 4.40, whose DINOv2 interpolates the stored position-embedding grid
(37x37 for image_size 518) to the input grid with ``interpolate(scale_factor=((g + 0.1) / G, ...))``.
transformers >= 4.46 calls ``interpolate(size=(g, g))`` instead; the embeddings differ by O(1) (fixture
README section 5). ``position_interpolation="scale_factor"`` (default) reproduces the official behaviour on
current transformers; ``"size"`` gives today's transformers behaviour. See docs/parity_pitfalls.md.

Output used by IMAGPose: ``last_hidden_state`` (CLS + patch tokens after the final LayerNorm), 257 tokens
for a 224x224 input, fed to the UNet cross-attention with no projection.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import Dinov2Config, Dinov2Model
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings

POSITION_INTERPOLATIONS = ("scale_factor", "size")


class OfficialDinov2Embeddings(Dinov2Embeddings):
    """Dinov2Embeddings whose position interpolation follows transformers 4.40 (``scale_factor`` + 0.1)."""

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        num_patches = embeddings.shape[1] - 1
        num_positions = self.position_embeddings.shape[1] - 1
        if num_patches == num_positions and height == width:
            return self.position_embeddings
        grid = math.sqrt(num_positions)
        dim = embeddings.shape[-1]
        # +0.1 avoids floor() rounding the output size down (facebookresearch/dino issue 8)
        new_h = height // self.config.patch_size + 0.1
        new_w = width // self.config.patch_size + 0.1
        patch_pos = self.position_embeddings[:, 1:].reshape(1, int(grid), int(grid), dim).permute(0, 3, 1, 2)
        patch_pos = nn.functional.interpolate(
            patch_pos.to(torch.float32), scale_factor=(float(new_h / grid), float(new_w / grid)),
            mode="bicubic", align_corners=False,
        ).to(self.position_embeddings.dtype)
        if int(new_h) != patch_pos.shape[-2] or int(new_w) != patch_pos.shape[-1]:
            raise ValueError("Interpolated DINOv2 position embeddings do not match the input patch grid.")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((self.position_embeddings[:, :1], patch_pos), dim=1)


class IMAGPoseImageEncoder(Dinov2Model):
    """``Dinov2Model`` whose position interpolation is chosen by ``config.position_interpolation``."""

    def __init__(self, config: Dinov2Config):
        super().__init__(config)
        mode = getattr(config, "position_interpolation", "scale_factor")
        if mode not in POSITION_INTERPOLATIONS:
            raise ValueError(f"position_interpolation must be one of {POSITION_INTERPOLATIONS}, got {mode!r}.")
        config.position_interpolation = mode
        if mode == "scale_factor":
            self.embeddings = OfficialDinov2Embeddings(config)
            self.post_init()

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size


# Checkpoints saved by transformers < 5 (dinov2-base on the Hub, the official fixtures) use the old key names
# (attention.attention.query, ...); transformers converts them per class name, so register ours.
register_checkpoint_conversion_mapping(
    IMAGPoseImageEncoder.__name__, get_checkpoint_conversion_mapping("Dinov2Model"), overwrite=True
)
