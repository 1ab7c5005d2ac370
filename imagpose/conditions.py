"""Encode the conditions of a batch of canvases once per request (everything the UNet needs but x_t).

Notation (<field> -> paper):
    context         F_C = cat([DINOv2(ref), FLC(VAE(ref))])      (B, 257 + N, D)   "feature-level condition"
    masked_latents  VAE(masked joint image), scaled latents       (B, 4, h, w)      "image-level condition" F_I
    flag            1 on source tiles, 0 on target tiles          (B, 1, h, w)
    pose_features   F_P = PoseGuider(joint pose in [0, 1])        (B, C0, h, w)
h, w = canvas / 8. Preprocessing follows the official pipeline exactly (see docs/parity_pitfalls.md):
    DINOv2 input  ref.resize((224, 224)) with PIL bicubic (aspect squash), CLIP mean/std
    FLC input     ref resized to the whole canvas with PIL Lanczos, [-1, 1], VAE-encoded (AutoencoderKL: the
                  official ``latent_dist.mean`` * 0.18215; see imagpose.autoencoders)
    masked canvas 2x - 1 (black tiles are -1), VAE-encoded the same way
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from .canvas import JointCanvas
from .images import pil_to_tensor
from .runtime import Runtime

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DINO_INPUT_SIZE = 224


@dataclass
class Conditions:
    context: torch.Tensor
    masked_latents: torch.Tensor
    flag: torch.Tensor
    pose_features: torch.Tensor

    def for_guidance(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batches for classifier-free guidance, rows ordered ``[uncond (B), cond (B)]``.

        Official null condition: the context tokens are exact zeros; flag, masked latent and pose features
        are kept in both halves (paper Eq. 5 writes the null branch as pose-only; the code differs).
        Returns (context (2B, N, D), image condition ``cat([flag, masked])`` (2B, 5, h, w), pose (2B, C0, h, w)).
        """
        context = torch.cat([torch.zeros_like(self.context), self.context])
        image_condition = torch.cat([self.flag, self.masked_latents], dim=1).repeat(2, 1, 1, 1)
        return context, image_condition, self.pose_features.repeat(2, 1, 1, 1)

    def without_guidance(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.context, torch.cat([self.flag, self.masked_latents], dim=1), self.pose_features


def dino_pixels(reference: Image.Image) -> torch.Tensor:
    """(3, 224, 224) CLIP-normalised DINOv2 input: ``ref.resize((224, 224))`` (bicubic squash)."""
    image = reference.resize((DINO_INPUT_SIZE, DINO_INPUT_SIZE), Image.BICUBIC)
    x = pil_to_tensor(image)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std


def reference_canvas_pixels(reference: Image.Image, canvas_size: tuple[int, int]) -> torch.Tensor:
    """(3, Hc, Wc) in [-1, 1]: the tile-size reference upscaled to the whole canvas with Lanczos."""
    height, width = canvas_size
    image = reference if reference.size == (width, height) else reference.resize((width, height), Image.LANCZOS)
    return VaeImageProcessor.normalize(pil_to_tensor(image))  # 2x - 1


@torch.no_grad()
def encode_conditions(canvases: list[JointCanvas], runtime: Runtime, device: torch.device,
                      dtype: torch.dtype) -> Conditions:
    """Encode B canvases of one layout (same canvas size) into :class:`Conditions` with a runtime.

    The VAE latents are the scaled latents of :func:`imagpose.autoencoders.encode` (AutoencoderKL: the posterior
    mean, no sampling, times 0.18215, as the official inference). Each
    request is encoded on its own (batch 1, like diffusers' VAE slicing): these networks run once per
    request, so batching them gains little, and this way a request's conditions - hence its images - do
    not depend on what it is batched with (convolution kernels choose different algorithms per batch size).
    """
    return Conditions(*(torch.cat(parts) for parts in zip(*(_encode_one(c, runtime, device, dtype)
                                                             for c in canvases))))


def _encode_one(canvas: JointCanvas, runtime: Runtime, device, dtype) -> tuple[torch.Tensor, ...]:
    def batch(tensor):
        return tensor[None].to(device=device, dtype=dtype)

    dino_tokens = runtime.image_encoder(batch(dino_pixels(canvas.reference)))
    ref_latents = runtime.vae_encode(batch(reference_canvas_pixels(canvas.reference, canvas.layout.canvas_size)))
    flc_tokens = runtime.flc(ref_latents)
    masked_latents = runtime.vae_encode(batch(canvas.person * 2.0 - 1.0))
    pose_features = runtime.pose_guider(batch(canvas.pose))
    context = torch.cat([dino_tokens, flc_tokens], dim=1)
    return context, masked_latents, batch(canvas.flag), pose_features
