"""Counting the FLOPs of the real pipeline call: the pipeline on the CPU, its networks on the meta device.

FLOPs are counted on meta tensors (a full-size model is too large for a CPU run, and on CPU FlopCounterMode
counts 0 for scaled_dot_product_attention), but ``IMAGPosePipeline.__call__`` cannot run on meta tensors: the
DDIM update reads the timestep's value. So the pipeline runs on the CPU exactly as users run it (canvas
assembly, conditions, CFG batching, the scheduler) and only its network calls go to the meta device:
:class:`MetaRuntime` moves each call's tensors to meta, runs the network there, where FlopCounterMode sees it,
and hands the pipeline zeros of the output's shape and dtype on the CPU.

The DeepCache steps and the guidance interval go through the same runtime calls (``unet_deepcache_full`` /
``unet_deepcache_shallow``, and ``unet`` at B or 2B rows), so their FLOPs are counted as they run: a cached step
counts only its shallow path.
"""

from __future__ import annotations

import torch

from imagpose.pipeline import IMAGPosePipeline
from imagpose.runtime import Runtime, RuntimeWrapper
from imagpose.sampling_config import SamplingConfig


class MetaNetworksPipeline(IMAGPosePipeline):
    """An :class:`~imagpose.pipeline.IMAGPosePipeline` built from meta-device modules whose tensors live on the
    CPU; run it with ``runtime=MetaRuntime(...)``."""

    @property
    def device(self) -> torch.device:  # also the pipeline's _execution_device (no offload hooks here)
        return torch.device("cpu")

    def check_memory(self, layouts, guidance_scale=SamplingConfig.guidance_scale, output_type="pil",
                     device=None) -> None:
        """Nothing to refuse: the networks allocate nothing on the meta device, whatever the model's size."""


class MetaRuntime(RuntimeWrapper):
    """Runs ``runtime`` (whose networks are on the meta device) on meta copies of the inputs; returns CPU zeros."""

    def __init__(self, runtime: Runtime):
        super().__init__(runtime, f"{runtime.name}-meta")

    def call(self, method: str, *args):
        output = super().call(method, *[arg.to("meta") if torch.is_tensor(arg) else arg for arg in args])
        if isinstance(output, tuple):  # DeepCache's full step: (prediction, deep feature)
            return tuple(torch.zeros(o.shape, dtype=o.dtype, device="cpu") for o in output)
        return torch.zeros(output.shape, dtype=output.dtype, device="cpu")
