"""SDK throughput: the same requests run one by one through the pipeline and through the batching SDK
(:func:`imagpose.sdk.compare_throughput`), on the benchmark's IMAGPose model as released (T2 requests of the
shipped sample people)."""

from __future__ import annotations

import torch

from imagpose.sdk import compare_throughput

from .harness import cpu_name
from .imagpose_method import IMAGPoseMethod
from .scenarios import resolve_setting


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


@torch.no_grad()
def measure_sdk_throughput(device: str = "cpu", size: str = "full", steps: int | None = None, requests: int = 4,
                           max_batch: int = 4, repeats: int = 3, model_dir: str | None = None) -> dict:
    """Requests per second run sequentially and through the SDK (medians of ``repeats`` alternating runs after a
    warm-up), and the SDK's speed-up; ``steps`` defaults to the released 20; ``model_dir``: a pipeline folder
    instead of the size's random-weight preset."""
    device_t = torch.device(device)
    torch.manual_seed(0)
    method = IMAGPoseMethod(size, model_dir=model_dir).to(device_t).eval()
    setting = resolve_setting(method.info.released, "as_released", size, device_t.type, model_dir)
    method.apply_precision(setting)
    steps = steps or setting.steps
    batch = method.example_inputs(requests, setting)["requests"]
    comparison = compare_throughput(method.pipe, batch, repeats=repeats, max_batch=max_batch,
                                    num_inference_steps=steps)
    return {"device": device_name(device_t), "preset": method.model_name, "tile": list(setting.resolution),
            "precision": setting.precision, "steps": steps, "max_batch": max_batch, **comparison.as_dict()}
