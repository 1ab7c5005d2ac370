"""A :class:`~imagpose.runtime.Runtime` that meters another one, so the benchmark times the pipeline users run.

    pipe(requests, runtime=MeteredRuntime(runtime, meter, steps=20))

Every network call of ``IMAGPosePipeline.__call__`` goes through the runtime; this wrapper runs each call
inside the meter stage it belongs to:

    image_encoder, vae_encode, flc, pose_guider   -> "encoders"    (once per request)
    unet                                          -> "denoiser"    (once per denoising step, ``repeat=steps``)
    vae_decode                                    -> "vae_decode"  (once per request)

What runs between the calls (canvas assembly, the CFG combination, the DDIM update, cropping) belongs to
no stage.
"""

from __future__ import annotations

from imagpose.runtime import Runtime, RuntimeWrapper

from .meter import Meter

# network method -> the meter stage its calls belong to; the UNet's forms run once per denoising step
STAGES = {"image_encoder": "encoders", "vae_encode": "encoders", "flc": "encoders", "pose_guider": "encoders",
          "unet": "denoiser", "unet_deepcache_full": "denoiser", "unet_deepcache_shallow": "denoiser",
          "vae_decode": "vae_decode"}


class MeteredRuntime(RuntimeWrapper):
    """Runs ``runtime``'s networks, each call inside its stage of ``meter`` (see the module docstring).

    Args:
        runtime: the runtime doing the work (PyTorch, ONNX Runtime, TensorRT, ...).
        meter: a :class:`~imagpose.bench.meter.Meter` (time or FLOPs).
        steps: denoising steps of the generation being measured; a quick run may make fewer UNet calls, and
            the meter extrapolates the per-step cost to ``steps``.
    """

    def __init__(self, runtime: Runtime, meter: Meter, steps: int):
        super().__init__(runtime)
        self.meter, self.steps = meter, steps

    def call(self, method: str, *args):
        stage = STAGES[method]
        with self.meter.stage(stage, repeat=self.steps if stage == "denoiser" else None):
            return super().call(method, *args)
