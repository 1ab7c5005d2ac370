"""Runtime backends: the seam every fast path replaces.

The pipeline never calls its modules directly; it calls a :class:`Runtime`, which runs the six networks of
one generation. ``TorchRuntime`` (the reference) wraps the pipeline's own modules; ``imagpose.export.runtime``
adds ONNX Runtime and TensorRT runtimes with the same methods, so ``pipe(requests, runtime=...)`` gives the
same outputs whatever runs underneath. Only :meth:`Runtime.unet` runs per denoising step; everything else
runs once per request.

Shapes (B = batch, Hc x Wc canvas pixels, h x w = canvas / 8, N context tokens):
    image_encoder(pixels (B, 3, 224, 224))                      -> tokens (B, 257, D)
    vae_encode(pixels (B, 3, Hc, Wc) in [-1, 1])                 -> scaled latents (B, 4, h, w) (imagpose.autoencoders)
    flc(latents (B, 4, h, w))                                    -> tokens (B, (h/16)(w/16), D)
    pose_guider(pose (B, 3, Hc, Wc) in [0, 1])                   -> features (B, C0, h, w)
    unet(sample (B, 9, h, w), timestep (1,) or (B,), context (B, N, D), pose_features (B, C0, h, w), grid)
                                                                 -> prediction (B, 4, h, w)
    vae_decode(latents (B, 4, h, w))                             -> images (B, 3, Hc, Wc) in [0, 1]

DeepCache (:mod:`imagpose.deepcache`) needs two more UNet forms, :class:`DeepCacheRuntime`; ``branch`` is the
DeepCache skip branch, and the deep feature is (B, C_k, h / 2**l, w / 2**l) (``IMAGPoseUNet.deepcache_feature``):
    unet_deepcache_full(sample, timestep, context, pose_features, grid, branch)   -> (prediction, deep feature)
    unet_deepcache_shallow(sample, timestep, context, pose_features, deep_feature, grid, branch) -> prediction
"""

from __future__ import annotations

import functools
from typing import Protocol

import torch

from . import autoencoders

# The runtimes by name, everywhere a user picks one (command lines, servers, parity, benchmarks): the PyTorch
# reference and the exported ones of imagpose.export.runtime
RUNTIMES = ("torch", "onnxruntime", "tensorrt")

# Exportable component -> the Runtime method that runs it: the one table the exporter, the exported runtimes and
# the parity harness share. Only the UNet also takes the view grid; every other method takes one tensor.
RUNTIME_METHODS = {"unet": "unet", "vae_encoder": "vae_encode", "vae_decoder": "vae_decode",
                   "image_encoder": "image_encoder", "pose_guider": "pose_guider", "flc_tokenizer": "flc"}


class Runtime(Protocol):
    name: str

    def image_encoder(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def vae_encode(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def flc(self, latents: torch.Tensor) -> torch.Tensor: ...

    def pose_guider(self, pose: torch.Tensor) -> torch.Tensor: ...

    def unet(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
             pose_features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor: ...

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor: ...


# DeepCache's UNet forms -> the Runtime methods that run them (exported per branch as ``<form>_b<branch>``)
DEEPCACHE_METHODS = {"unet_deepcache_full": "unet_deepcache_full", "unet_deepcache_shallow": "unet_deepcache_shallow"}
# every method that runs a network
NETWORK_METHODS = (*RUNTIME_METHODS.values(), *DEEPCACHE_METHODS.values())


class DeepCacheRuntime(Runtime, Protocol):
    """A runtime that can also run DeepCache steps (the PyTorch, ONNX Runtime and TensorRT runtimes can). Kept
    apart from :class:`Runtime` so a runtime without it still runs every other setting. ``deepcache_branches``
    is the one place a runtime says which skip branches it can run (an exported runtime: those whose graphs it
    holds); the pipeline checks a call's branch against it before any network runs."""

    def deepcache_branches(self) -> set[int]: ...

    def unet_deepcache_full(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                            pose_features: torch.Tensor, grid: tuple[int, int],
                            branch: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def unet_deepcache_shallow(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                               pose_features: torch.Tensor, deep_feature: torch.Tensor, grid: tuple[int, int],
                               branch: int) -> torch.Tensor: ...


class TorchRuntime:
    """The reference runtime: the pipeline's PyTorch modules, in whatever device/dtype they are."""

    name = "torch"

    def __init__(self, unet, vae, image_encoder, flc_tokenizer, pose_guider):
        self.unet_model, self.vae, self.image_encoder_model = unet, vae, image_encoder
        self.flc_model, self.pose_guider_model = flc_tokenizer, pose_guider

    def image_encoder(self, pixels):
        return self.image_encoder_model(pixels).last_hidden_state

    def vae_encode(self, pixels):
        return autoencoders.encode(self.vae, pixels)

    def flc(self, latents):
        return self.flc_model(latents)

    def pose_guider(self, pose):
        return self.pose_guider_model(pose)

    def unet(self, sample, timestep, context, pose_features, grid):
        return self.unet_model(sample, timestep, context, pose_features, grid=grid, return_dict=False)[0]

    def deepcache_branches(self) -> set[int]:
        return set(range(self.unet_model.num_skip_branches))

    def unet_deepcache_full(self, sample, timestep, context, pose_features, grid, branch):
        return self.unet_model.forward_deepcache_full(sample, timestep, context, pose_features, grid, branch)

    def unet_deepcache_shallow(self, sample, timestep, context, pose_features, deep_feature, grid, branch):
        return self.unet_model.forward_deepcache_shallow(sample, timestep, context, pose_features, deep_feature,
                                                         grid, branch)

    def vae_decode(self, latents):
        return (autoencoders.decode(self.vae, latents) / 2 + 0.5).clamp(0, 1)


class RuntimeWrapper:
    """A runtime that runs another one (``inner``) with something around each network call: a subclass overrides
    :meth:`call` alone, and every network method, present and future, goes through it (timing, moving tensors,
    recording, casting). The wrapper has exactly the network methods the inner runtime has (so it can run
    DeepCache steps only when the inner runtime can), and every other attribute is the inner runtime's.
    """

    def __init__(self, inner, name: str | None = None):
        self.inner = inner
        self.name = name or inner.name

    def call(self, method: str, *args):
        """Run network ``method`` of the inner runtime (override to wrap it)."""
        return getattr(self.inner, method)(*args)

    def __getattr__(self, attribute: str):  # only reached for what the wrapper itself does not define
        value = getattr(self.inner, attribute)
        if attribute in NETWORK_METHODS:
            return functools.partial(self.call, attribute)
        return value
