"""How far a quantized UNet is from the fp32 PyTorch reference, and how much faster it is.

Per step (teacher-forced): the fp32 reference generates each request; at every step the quantized runtime's UNet
sees the very inputs the reference UNet saw, so the SQNR of each step measures the quantization error alone, not
the drift of a trajectory of its own. End to end: the whole generation through the quantized runtime, SSIM/PSNR of
the decoded canvas and of the target tiles against the reference's. Speed: the median UNet call of the fp32 and
the quantized ONNX Runtime sessions on the same recorded inputs, timed in one run, alternating.
"""

from __future__ import annotations

import statistics

import torch

from imagpose.sampling_config import SamplingConfig
from imagpose.timing import time_runs

from .parity import psnr, sqnr_db, ssim
from .quantize import RecordingRuntime


@torch.no_grad()
def quantization_parity(pipe, backend, requests, steps: int = SamplingConfig.num_inference_steps,
                        guidance_scale: float = SamplingConfig.guidance_scale) -> dict:
    """Per-step SQNR (min and mean over ``requests``) and final SSIM/PSNR of ``backend`` against fp32 torch."""
    kwargs = dict(num_inference_steps=steps, guidance_scale=guidance_scale, output_type="pt", progress=False)
    per_step: list[list[float]] = [[] for _ in range(steps)]
    canvas_ssim, canvas_psnr, target_ssim = [], [], []
    for request in requests:
        recorder = RecordingRuntime(pipe.torch_runtime())
        reference = pipe(request, runtime=recorder, **kwargs).results[0]
        for step, (call, expected) in enumerate(zip(recorder.calls, recorder.outputs)):
            per_step[step].append(sqnr_db(expected, backend.unet(*call.inputs, call.grid).float()))
        test = pipe(request, runtime=backend, **kwargs).results[0]
        canvas_ssim.append(ssim(reference.canvas[None], test.canvas[None]))
        canvas_psnr.append(psnr(reference.canvas[None], test.canvas[None]))
        target_ssim.append(statistics.mean(ssim(a[None], b[None]) for a, b in zip(reference.targets, test.targets)))
    return {"requests": len(requests), "steps": steps, "guidance_scale": guidance_scale,
            "sqnr_db_per_step_min": [round(min(s), 2) for s in per_step],
            "sqnr_db_per_step_mean": [round(statistics.mean(s), 2) for s in per_step],
            "canvas_ssim_min": round(min(canvas_ssim), 4), "canvas_ssim_mean": round(statistics.mean(canvas_ssim), 4),
            "canvas_psnr_db_mean": round(statistics.mean(canvas_psnr), 2),
            "target_ssim_mean": round(statistics.mean(target_ssim), 4)}


@torch.no_grad()
def unet_speed(pipe, runtimes: dict, request, runs: int = 10, warmup: int = 2) -> dict:
    """Median seconds of one UNet call (the request's first denoising step, CFG batch) for each runtime of
    ``runtimes`` ({name: runtime}), timed in rounds that alternate between them so both see the same load."""
    recorder = RecordingRuntime(pipe.torch_runtime())
    pipe(request, num_inference_steps=1, output_type="latent", progress=False, runtime=recorder)
    call = recorder.calls[0]
    seconds: dict[str, list[float]] = {name: [] for name in runtimes}
    for runtime in runtimes.values():
        time_runs(lambda runtime=runtime: runtime.unet(*call.inputs, call.grid), warmup=warmup, runs=1)
    for _ in range(runs):
        for name, runtime in runtimes.items():
            seconds[name] += time_runs(lambda runtime=runtime: runtime.unet(*call.inputs, call.grid), warmup=0,
                                       runs=1).seconds
    return {name: round(statistics.median(values), 5) for name, values in seconds.items()}
