"""A :class:`~imagpose.runtime.Runtime` that meters another one, so the benchmark times the pipeline users run.

    pipe(requests, backend=MeteredRuntime(runtime, meter, steps=20))

Every network call of ``IMAGPosePipeline.__call__`` goes through the runtime; this wrapper runs each call
inside the meter stage it belongs to:

    image_encoder, vae_encode, flc, pose_guider   -> "encoders"    (once per request)
    unet                                          -> "denoiser"    (once per denoising step, ``repeat=steps``)
    vae_decode                                    -> "vae_decode"  (once per request)

What runs between the calls (canvas assembly, the CFG combination, the DDIM update, cropping) belongs to
no stage.
"""

from __future__ import annotations

from imagpose.runtime import Runtime

from .meter import Meter


class MeteredRuntime:
    """Runs ``runtime``'s networks, each call inside its stage of ``meter`` (see the module docstring).

    Args:
        runtime: the runtime doing the work (PyTorch, ONNX Runtime, TensorRT, ...).
        meter: a :class:`~imagpose.bench.meter.Meter` (time or FLOPs).
        steps: denoising steps of the generation being measured; a quick run may make fewer UNet calls, and
            the meter extrapolates the per-step cost to ``steps``.
    """

    def __init__(self, runtime: Runtime, meter: Meter, steps: int):
        self.inner, self.meter, self.steps = runtime, meter, steps
        self.name = runtime.name

    def image_encoder(self, pixels):
        with self.meter.stage("encoders"):
            return self.inner.image_encoder(pixels)

    def vae_encode(self, pixels):
        with self.meter.stage("encoders"):
            return self.inner.vae_encode(pixels)

    def flc(self, latents):
        with self.meter.stage("encoders"):
            return self.inner.flc(latents)

    def pose_guider(self, pose):
        with self.meter.stage("encoders"):
            return self.inner.pose_guider(pose)

    def unet(self, sample, timestep, context, pose_features, grid):
        with self.meter.stage("denoiser", repeat=self.steps):
            return self.inner.unet(sample, timestep, context, pose_features, grid)

    def unet_deepcache_full(self, sample, timestep, context, pose_features, grid, branch):
        with self.meter.stage("denoiser", repeat=self.steps):
            return self.inner.unet_deepcache_full(sample, timestep, context, pose_features, grid, branch)

    def unet_deepcache_shallow(self, sample, timestep, context, pose_features, deep_feature, grid, branch):
        with self.meter.stage("denoiser", repeat=self.steps):
            return self.inner.unet_deepcache_shallow(sample, timestep, context, pose_features, deep_feature, grid,
                                                     branch)

    def vae_decode(self, latents):
        with self.meter.stage("vae_decode"):
            return self.inner.vae_decode(latents)
