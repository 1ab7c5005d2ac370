"""IMAGPose as a benchmarked :class:`~imagpose.bench.baselines.base.Method`: the pipeline users run, metered.

``generate`` calls ``IMAGPosePipeline.__call__`` on real requests (the shipped sample people at the setting's
tile size) with ``runtime=MeteredRuntime(runtime, meter)``, so every timed network call is the pipeline's own,
on whichever runtime is under test (PyTorch, ONNX Runtime, TensorRT, the Triton CVA). Per request: DINOv2
once, the VAE encoder twice (the reference at canvas size and the masked canvas), the FLC tokenizer and the
PoseGuider once ("encoders"); the UNet once per DDIM step on the CFG batch of every request ("denoiser"); the
VAE decoder once ("vae_decode"). Canvas assembly (image loading, pose rendering, resizing: CPU image work that
the baselines' tensor inputs skip) and the sampler arithmetic between the calls belong to no stage. Guidance,
eta and the scheduler are the pipeline's defaults (w = 2.0, eta = 0, the official DDIM).

Quick runs (``meter.loop_limit``) call the pipeline with that many steps: the per-step cost does not depend on
the step count, so the meter extrapolates the denoiser to the setting's steps. Built on the meta device, the
same call counts FLOPs: the pipeline runs on the CPU and its networks on meta (:mod:`.meta_pipeline`).

``model_dir`` is a pipeline folder (``IMAGPosePipeline.from_pretrained``, e.g. a trained model) timed instead of
the random-weight preset of the size; on the meta device its networks are built from the folder's configs.

``stars=True`` is IMAGPose*: one pass yields 3 target images (a 2x2 canvas, one source), so the cost per
generated image is a third of a pass.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from imagpose import scenarios
from imagpose.canvas import GridLayout
from imagpose.pipeline import IMAGPosePipeline
from imagpose.presets import Preset, build_components
from imagpose.pretrained import trained_tile_size, training_record
from imagpose.samples import sample
from imagpose.schedulers import official_ddim_scheduler

from .baselines.base import Method, MethodInfo, Setting
from .meta_pipeline import MetaNetworksPipeline, MetaRuntime
from .meter import Meter, count_flops
from .metered_runtime import MeteredRuntime

RELEASED = Setting(
    "as_released", resolution=(256, 176), steps=20, evals_per_step=2, batched_cfg=True, precision="fp16",
    scheduler="ddim", notes="paper: DDIM 20 steps, w = 2.0, 256x176 tiles (padded to 256x192, canvas 512x384); "
                            "the official test.py uses 30 steps and 512x512 tiles")
PRESET_OF_SIZE = {"full": "sd15", "reduced": "mid", "tiny": "tiny"}  # tiny: for tests
SOURCES = ("person_red_front", "person_blue_front")  # request i uses source i % 2
TARGETS = ("walking", "arms_up", "side")  # poses of the same person; T2 uses the first


def model_architecture(model_dir: str | Path) -> Preset:
    """The architecture of a pipeline folder as a :class:`~imagpose.presets.Preset`, read from its component
    configs (no weights), so that ``build_components(..., meta=True)`` builds it on the meta device."""
    from transformers import Dinov2Config

    from imagpose.autoencoders import autoencoder_class, folder_class_name
    from imagpose.models import FLCTokenizer, IMAGPoseUNet, PoseGuider

    folder = Path(model_dir)

    def init_kwargs(cls, name: str) -> dict:
        return cls.extract_init_dict(cls.load_config(folder / name))[0]

    vae_class = folder_class_name(folder / "vae")
    return Preset(name=folder.name, description=f"the architecture of {folder}", vae_class=vae_class,
                  unet=init_kwargs(IMAGPoseUNet, "unet"), vae=init_kwargs(autoencoder_class(vae_class), "vae"),
                  image_encoder=Dinov2Config.from_pretrained(folder / "image_encoder").to_diff_dict(),
                  pose_guider=init_kwargs(PoseGuider, "pose_guider"), flc=init_kwargs(FLCTokenizer, "flc_tokenizer"))


def describe_weights(model_dir: str | Path | None) -> dict:
    """What the IMAGPose rows run, for the report: a pipeline folder (trained when it carries the training record
    of :mod:`imagpose.pretrained`; a folder without one may hold converted or random weights) or the presets."""
    if model_dir is None:
        return {"model": None, "weights": "random", "tile_size": None}
    return {"model": str(model_dir), "weights": "trained" if training_record(model_dir) else "unrecorded",
            "tile_size": trained_tile_size(model_dir)}


class IMAGPoseMethod(Method):
    def __init__(self, size: str = "full", stars: bool = False, model_dir: str | Path | None = None):
        super().__init__()
        self.stars = stars
        released = replace(RELEASED, images_per_pass=3) if stars else RELEASED
        self.info = MethodInfo(
            name="IMAGPose*" if stars else "IMAGPose", paper="NeurIPS 2024", source="muzishen/IMAGPose@60f649f",
            released=released, expected_params={"unet": 1312.7, "pose_guider": 1.09, "flc_tokenizer": 0.79})
        self.preset = PRESET_OF_SIZE[size] if model_dir is None else None
        self.model_name = Path(model_dir).name if model_dir is not None else self.preset  # names export folders
        self.on_meta = torch.get_default_device().type == "meta"
        if model_dir is None:
            components = build_components(self.preset, meta=self.on_meta)
        elif self.on_meta:
            components = build_components(model_architecture(model_dir), meta=True)
        else:
            components = dict(IMAGPosePipeline.from_pretrained(model_dir).components)
        if self.on_meta:  # the sampler runs on the CPU (see .meta_pipeline): its tables must not be meta tensors
            with torch.device("cpu"):
                components["scheduler"] = official_ddim_scheduler()
        self.unet, self.vae = components["unet"], components["vae"]
        self.image_encoder, self.flc_tokenizer = components["image_encoder"], components["flc_tokenizer"]
        self.pose_guider = components["pose_guider"]
        self.pipe = (MetaNetworksPipeline if self.on_meta else IMAGPosePipeline)(**components)
        self.backend = None  # a Runtime (ONNX Runtime, TensorRT, ...); None: the pipeline's PyTorch modules

    def runtime(self):
        runtime = self.backend or self.pipe.torch_runtime()
        return MetaRuntime(runtime) if self.on_meta else runtime

    def param_groups(self):
        return {"unet": self.unet, "pose_guider": self.pose_guider, "flc_tokenizer": self.flc_tokenizer,
                "image_encoder": self.image_encoder, "vae": self.vae}

    def layout(self, setting: Setting) -> GridLayout:
        return GridLayout(2, 2, *setting.resolution, pad_multiple=self.pipe.pad_multiple,
                          vae_scale=self.pipe.vae_scale_factor)

    def example_inputs(self, batch, setting, device=None, dtype=None, generator=None):
        """``batch`` requests at the setting's tile size: T2 (the official test.py layout) or, for IMAGPose*, one
        source and 3 targets. Seeds come from ``generator`` (0, 1, ... without one); the pipeline picks the
        device and dtype from its modules."""
        seeds = (torch.randint(2**31, (batch,), generator=generator).tolist() if generator is not None
                 else list(range(batch)))
        requests = []
        for i, seed in enumerate(seeds):
            person = SOURCES[i % len(SOURCES)]
            image, keypoints = sample(person)
            targets = [sample(person.replace("front", pose))[1] for pose in TARGETS]
            if self.stars:
                request = scenarios.imagpose_star(image, keypoints, targets, tile_size=setting.resolution, seed=seed)
            else:
                request = scenarios.t2(image, keypoints, targets[0], tile_size=setting.resolution, seed=seed)
            requests.append(request)
        return {"requests": requests}

    @torch.no_grad()
    def generate(self, inputs, setting, meter: Meter, generator=None):
        """The pipeline call; returns every generated target, (B * images_per_pass, 3, H, W) in [0, 1]. Seeds
        come with the requests (``generator`` is not used)."""
        runtime = MeteredRuntime(self.runtime(), meter, steps=setting.steps)
        results = self.pipe(inputs["requests"], num_inference_steps=meter.runs(setting.steps), output_type="pt",
                            progress=False, runtime=runtime).results
        return torch.stack([target for result in results for target in result.targets])

    def flop_checks(self, device="meta"):
        height, width = self.layout(self.info.released).latent_size
        unet_input = torch.zeros(2, 9, height, width, device=device)  # the CFG batch of one request
        context = torch.zeros(2, 257 + (height // 16) * (width // 16), self.unet.config.cross_attention_dim,
                              device=device)
        pose = torch.zeros(2, self.unet.config.block_out_channels[0], height, width, device=device)
        return {"unet_cfg_step": count_flops(self.pipe.torch_runtime().unet, unet_input,
                                             torch.zeros(1, device=device), context, pose, (2, 2)) / 1e12}
