"""IMAGPose as a benchmarked :class:`~imagpose.bench.baselines.base.Method`, on any runtime backend.

The stages are the pipeline's own (``imagpose.pipeline``/``conditions``) on tensors: canvas assembly is CPU
image work outside the networks and is not timed. Per generation: DINOv2 once, the VAE encoder twice (the
reference at canvas size and the masked canvas), the FLC tokenizer and the PoseGuider once, the UNet once per
DDIM step on the CFG batch (2B, batched), the VAE decoder once. ``stars=True`` is IMAGPose*: one pass yields
3 target images (a 2x2 canvas, one source), so the cost per generated image is a third of a pass.
"""

from __future__ import annotations

import torch

from imagpose.canvas import GridLayout
from imagpose.conditions import Conditions
from imagpose.presets import build_components, get_preset
from imagpose.schedulers import official_ddim_scheduler

from .baselines.base import Method, MethodInfo, Setting
from .meter import Meter

RELEASED = Setting(
    "as_released", resolution=(256, 176), steps=20, evals_per_step=2, batched_cfg=True, precision="fp16",
    scheduler="ddim", notes="paper: DDIM 20 steps, w = 2.0, 256x176 tiles (padded to 256x192, canvas 512x384); "
                            "the official test.py uses 30 steps and 512x512 tiles")


class IMAGPoseMethod(Method):
    def __init__(self, size: str = "full", stars: bool = False, backend=None):
        super().__init__()
        preset = {"full": "sd15", "reduced": "mid"}[size]
        self.stars = stars
        released = RELEASED if not stars else Setting(**{**RELEASED.__dict__, "images_per_pass": 3})
        self.info = MethodInfo(
            name="IMAGPose*" if stars else "IMAGPose", paper="NeurIPS 2024", source="muzishen/IMAGPose@60f649f",
            released=released, expected_params={"unet": 1312.7, "pose_guider": 1.09, "flc_tokenizer": 0.79})
        meta = torch.get_default_device().type == "meta"
        components = build_components(get_preset(preset), meta=meta)
        self.unet, self.vae = components["unet"], components["vae"]
        self.image_encoder, self.flc_tokenizer = components["image_encoder"], components["flc_tokenizer"]
        self.pose_guider = components["pose_guider"]
        self.scheduler = official_ddim_scheduler()
        self.backend = backend

    def runtime(self):
        from imagpose.runtime import TorchRuntime

        return self.backend or TorchRuntime(self.unet, self.vae, self.image_encoder, self.flc_tokenizer,
                                            self.pose_guider)

    def param_groups(self):
        return {"unet": self.unet, "pose_guider": self.pose_guider, "flc_tokenizer": self.flc_tokenizer,
                "image_encoder": self.image_encoder, "vae": self.vae}

    def layout(self, setting: Setting) -> GridLayout:
        vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return GridLayout(2, 2, *setting.resolution, pad_multiple=vae_scale * self.unet.tile_multiple,
                          vae_scale=vae_scale)

    def example_inputs(self, batch, setting, device, dtype, generator=None):
        height, width = self.layout(setting).canvas_size

        def rand(*shape):
            if generator is not None:
                return torch.rand(shape, generator=generator).to(device, dtype)
            return torch.rand(shape, device=device, dtype=dtype)

        return {"dino_pixels": rand(batch, 3, 224, 224), "reference": rand(batch, 3, height, width) * 2 - 1,
                "masked": rand(batch, 3, height, width) * 2 - 1, "pose": rand(batch, 3, height, width),
                "flag": (rand(batch, 1, height // 8, width // 8) > 0.5).to(dtype)}

    @torch.no_grad()
    def generate(self, inputs, setting, meter: Meter | None = None, generator=None):
        meter, runtime = self.default_meter(meter), self.runtime()
        layout = self.layout(setting)
        batch = inputs["reference"].shape[0]
        device, dtype = inputs["reference"].device, inputs["reference"].dtype
        with meter.stage("encoders"):
            context = torch.cat([runtime.image_encoder(inputs["dino_pixels"]),
                                 runtime.flc(runtime.vae_encode(inputs["reference"]))], dim=1)
            conditions = Conditions(context, runtime.vae_encode(inputs["masked"]), inputs["flag"],
                                    runtime.pose_guider(inputs["pose"]))
            context, image_condition, pose_features = conditions.for_guidance()
        shape = (batch, 4, *layout.latent_size)
        latents = (torch.randn(shape, generator=generator).to(device, dtype) if generator is not None
                   else torch.randn(shape, device=device, dtype=dtype))
        self.scheduler.set_timesteps(setting.steps)
        for t in self.scheduler.timesteps[: meter.runs(setting.steps)]:
            with meter.stage("denoiser", repeat=setting.steps):
                model_input = torch.cat([torch.cat([latents] * 2), image_condition], dim=1)
                prediction = runtime.unet(model_input, t.reshape(1).to(device), context, pose_features,
                                          (layout.rows, layout.cols))
                uncond, cond = prediction.chunk(2)
                latents = self.scheduler.step(uncond + 2.0 * (cond - uncond), t, latents).prev_sample
        with meter.stage("vae_decode"):
            return runtime.vae_decode(latents)

    def flop_checks(self, device="meta"):
        from .meter import count_flops

        height, width = self.layout(self.info.released).latent_size
        sample = torch.zeros(2, 9, height, width, device=device)  # the CFG batch of one request
        context = torch.zeros(2, 257 + (height // 16) * (width // 16), self.unet.config.cross_attention_dim,
                              device=device)
        pose = torch.zeros(2, self.unet.config.block_out_channels[0], height, width, device=device)
        return {"unet_cfg_step": count_flops(self.runtime().unet, sample, torch.zeros(1, device=device), context,
                                             pose, (2, 2)) / 1e12}
