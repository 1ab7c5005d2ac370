"""The interface every benchmarked method implements (the four baselines and IMAGPose itself).

A method is a set of networks plus the inference loop its public code runs. ``generate`` runs that loop
for a batch of generated images and wraps each piece of work in ``meter.stage(name)`` (one iteration of an
n-step loop: ``meter.stage(name, repeat=n)``) so the harness gets seconds or FLOPs per stage; loops run
``meter.runs(n)`` iterations (all of them unless the harness asks for a quick, extrapolated measurement).
Networks are built from the public configs with random weights; built inside ``with torch.device("meta"):``
they have shapes only (parameter and FLOP counts).

Stage names used across methods: "encoders" (once per image: image/pose encoders, VAE encodes),
"denoiser" (one sampling step: every network evaluation of that step, batched or sequential as released),
"vae_decode"; multi-stage methods prefix them ("stage2.denoiser").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..meter import Meter


@dataclass(frozen=True)
class Setting:
    """How a method generates: what its released code does, or a common policy."""

    name: str  # "as_released" or "common_policy"
    resolution: tuple[int, int]  # generated (height, width) in pixels
    steps: int  # sampling steps (per diffusion stage)
    evals_per_step: int  # denoiser evaluations per step
    batched_cfg: bool  # the evaluations of a step run as one batch
    precision: str  # "fp32" | "fp16"
    scheduler: str
    images_per_pass: int = 1  # generated images one pass yields (IMAGPose*: 3)
    candidates: int = 1  # images generated per kept image (PCDMs: 4, best SSIM kept)
    notes: str = ""


@dataclass
class MethodInfo:
    name: str
    paper: str
    source: str  # public repository @ commit the re-implementation follows
    released: Setting
    expected_params: dict[str, float] = field(default_factory=dict)  # part -> millions (baselines.md)
    expected_tflops: dict[str, float] = field(default_factory=dict)  # check name -> TFLOP (baselines.md)


class Method(nn.Module):
    """Base class: subclasses set ``info``, build their networks in ``__init__`` and implement the hooks."""

    info: MethodInfo

    def param_groups(self) -> dict[str, nn.Module]:
        """Named parts whose parameter counts are checked against ``info.expected_params``."""
        raise NotImplementedError

    def example_inputs(self, batch: int, setting: Setting, device, dtype, generator=None) -> dict:
        """Inputs for ``generate``: random tensors of the right shapes (source image, pose, ...), or, for IMAGPose,
        requests built from the shipped sample people."""
        raise NotImplementedError

    def generate(self, inputs: dict, setting: Setting, meter: Meter, generator=None) -> torch.Tensor:
        """Run the inference loop; returns images (B * images_per_pass, 3, H, W)."""
        raise NotImplementedError

    def flop_checks(self, device="meta") -> dict[str, float]:
        """FLOPs of the single forwards listed in ``info.expected_tflops`` (same keys), counted on ``device``."""
        raise NotImplementedError

    def apply_precision(self, setting: Setting) -> None:
        """Cast to the setting's precision; a method whose release mixes precisions overrides this."""
        self.to(torch.float16 if setting.precision == "fp16" else torch.float32)
