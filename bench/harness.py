"""Run benchmark scenarios: per-stage seconds per generated image, exact FLOPs, peak memory, TFLOP/s, MFU.

For each scenario:
  1. FLOPs, exact: the method is built on the meta device at the *full* size and run through its whole
     inference loop under :class:`~imagpose.bench.meter.FlopMeter` (one iteration per loop, scaled by the loop
     length; every iteration of a loop does the same work), at the scenario's setting (resolution, steps).
  2. Time: the method at the scenario's size on the device, ``warmup`` untimed runs, then ``repeats`` timed
     runs under :class:`~imagpose.bench.meter.TimeMeter` (device-synchronised); the median per stage is kept.
     Quick scenarios run ``loop_limit`` steps per loop and extrapolate, and the report says so.
  3. Per generated image: divided by the batch and by the images one pass yields (IMAGPose*: 3).
IMAGPose runs its real pipeline call (``IMAGPosePipeline.__call__``) with a metered runtime, on the size's
random-weight preset or on the pipeline folder ``Scenario.model`` names; see :mod:`imagpose.bench.imagpose_method`.
"""

from __future__ import annotations

import contextlib
import gc
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

from imagpose.timing import Stopwatch

from .meter import FlopMeter, TimeMeter
from .scenarios import Scenario, build_method, resolve_setting

PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}  # dense fp16/bf16 tensor-core peaks


@dataclass
class ScenarioResult:
    label: str
    method: str
    setting: dict
    scenario: dict
    device: str
    stage_seconds: dict = field(default_factory=dict)  # stage -> seconds per generated image
    stage_extrapolated: dict = field(default_factory=dict)
    seconds_per_image: float | None = None
    stage_tflops_full: dict = field(default_factory=dict)  # stage -> TFLOP per generated image, full size
    tflops_per_image_full: float | None = None
    tflops_per_image_measured_size: float | None = None
    achieved_tflops_per_s: float | None = None
    mfu: float | None = None
    peak_memory_gib: float | None = None
    error: str | None = None


def device_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def count_generation_flops(method_name: str, scenario: Scenario, size: str, device_type: str) -> dict[str, float]:
    """Exact FLOPs per pass (not per image) by stage, counted on the meta device."""
    with torch.device("meta"):
        method = build_method(method_name, size, scenario.model)
    setting = resolve_setting(method.info.released, scenario.setting, scenario.size, device_type, scenario.model)
    if size == "full" and scenario.size == "reduced":  # FLOP ratios are quoted at the full-size resolution
        setting = resolve_setting(method.info.released, scenario.setting, "full", device_type, scenario.model)
    inputs = method.example_inputs(scenario.batch, setting, "meta", torch.float32)
    with FlopMeter(loop_limit=1) as meter:
        method.generate(inputs, setting, meter)
    return {name: record.per_generation for name, record in meter.stages.items()}


def run_scenario(scenario: Scenario, device: str = "cpu", warmup: int = 1, repeats: int = 1,
                 backend_factory=None) -> ScenarioResult:
    device_t = torch.device(device)
    result = ScenarioResult(scenario.label, scenario.method, {}, asdict(scenario), str(device_t))
    try:
        full_flops = count_generation_flops(scenario.method, scenario, "full", device_t.type)
        measured_flops = (full_flops if scenario.size == "full"
                          else count_generation_flops(scenario.method, scenario, scenario.size, device_t.type))
        torch.manual_seed(0)
        method = build_method(scenario.method, scenario.size, scenario.model)
        setting = resolve_setting(method.info.released, scenario.setting, scenario.size, device_t.type,
                                  scenario.model)
        result.setting = asdict(setting)
        dtype = torch.float16 if setting.precision == "fp16" else torch.float32
        method = method.to(device_t).eval()
        method.apply_precision(setting)
        if backend_factory is not None:
            method.backend = backend_factory(method, setting)
        generator = torch.Generator().manual_seed(0)
        inputs = method.example_inputs(scenario.batch, setting, device_t, dtype, generator)
        if device_t.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device_t)
        runs = []
        for i in range(warmup + repeats):
            meter = TimeMeter(device_t, loop_limit=scenario.loop_limit)
            with torch.no_grad():
                method.generate(inputs, setting, meter, generator)
            if i >= warmup:
                runs.append(meter)
        per_image = scenario.batch * setting.images_per_pass
        for name in runs[0].stages:
            result.stage_seconds[name] = statistics.median(r.stages[name].per_generation for r in runs) / per_image
            result.stage_extrapolated[name] = runs[0].stages[name].extrapolated
        result.seconds_per_image = sum(result.stage_seconds.values())
        result.stage_tflops_full = {k: v / per_image / 1e12 for k, v in full_flops.items()}
        result.tflops_per_image_full = sum(result.stage_tflops_full.values())
        result.tflops_per_image_measured_size = sum(measured_flops.values()) / per_image / 1e12
        result.achieved_tflops_per_s = result.tflops_per_image_measured_size / result.seconds_per_image
        peak = device_peak_tflops(device_t)
        result.mfu = result.achieved_tflops_per_s / peak if peak else None
        if device_t.type == "cuda":
            result.peak_memory_gib = torch.cuda.max_memory_allocated(device_t) / 2**30
        else:  # process-wide high-water mark (cumulative over the run), the best CPU proxy
            result.peak_memory_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    except Exception as exc:  # a method that cannot run a setting is reported, the suite goes on
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        gc.collect()
        if device_t.type == "cuda":
            torch.cuda.empty_cache()
    return result


def cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: str) -> dict:
    import diffusers
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "platform": platform.platform(),
            "cpu": cpu_name(), "threads": torch.get_num_threads(),
            "device": device, "date": time.strftime("%Y-%m-%d %H:%M")}
    if torch.device(device).type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    return info


def run_suite(scenarios: list[Scenario], device: str = "cpu", warmup: int = 1, repeats: int = 1,
              progress: bool = True, backend_factories: dict | None = None) -> dict:
    results = []
    for scenario in scenarios:
        factory = (backend_factories or {}).get(scenario.backend)
        with Stopwatch() as watch:
            if scenario.backend != "eager" and factory is None:
                result = ScenarioResult(scenario.label, scenario.method, {}, asdict(scenario), device,
                                        error=f"backend {scenario.backend} is not available here")
            else:
                result = run_scenario(scenario, device, warmup, repeats, factory)
        results.append(result)
        if progress:
            status = result.error or f"{result.seconds_per_image:.2f} s/image, {result.tflops_per_image_full:.1f} " \
                                     "TFLOP/image (full size)"
            print(f"[bench] {scenario.label:<40} {status}  ({watch.seconds:.0f} s)", flush=True)
    return {"environment": environment(device), "results": [asdict(r) for r in results]}
