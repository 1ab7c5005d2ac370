"""SDK throughput: the same requests run one after another through the pipeline and through the batching SDK
(:mod:`imagpose.sdk`), on the benchmark's IMAGPose model (reduced size with ``quick``, else full size)."""

from __future__ import annotations

import torch

from .harness import cpu_name
from .imagpose_method import IMAGPoseMethod
from .scenarios import resolve_setting

REQUESTS = 4
MAX_BATCH = 4
QUICK_STEPS = 2  # quick runs time 2 denoising steps per request, as the quick scenarios do


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


@torch.no_grad()
def measure_sdk_throughput(device: str = "cpu", quick: bool = False, requests: int = REQUESTS,
                           max_batch: int = MAX_BATCH) -> dict:
    """Requests per second run sequentially and through the SDK, and their ratio (SDK / sequential)."""
    from imagpose.sdk import compare_throughput

    device_t = torch.device(device)
    size = "reduced" if quick else "full"
    torch.manual_seed(0)
    method = IMAGPoseMethod(size).to(device_t).eval()
    setting = resolve_setting(method.info.released, "as_released", size, device_t.type)
    method.apply_precision(setting)
    steps = QUICK_STEPS if quick else setting.steps
    batch = method.example_inputs(requests, setting)["requests"]
    timings = compare_throughput(method.pipe, batch, max_batch=max_batch, num_inference_steps=steps)
    sequential = requests / timings.sequential_seconds
    sdk = requests / timings.sdk_seconds
    return {"device": device_name(device_t), "preset": method.preset, "tile": list(setting.resolution),
            "precision": setting.precision, "steps": steps, "requests": requests, "max_batch": max_batch,
            "sequential_requests_per_s": sequential, "sdk_requests_per_s": sdk, "ratio": sdk / sequential}
