"""The sections of scripts/gpu_checks.py: what each one runs and at which sizes (the GPU run's plan and the dry
run's), and the child-process side that runs one section and records its results in a status file.

Each section's heavy imports (torch, imagpose, ONNX, TensorRT) are inside its functions: the parent process imports
this module for the section names and budgets only."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from gpu_report import write_json

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- what each section runs
@dataclass(frozen=True)
class Plan:
    """The arguments of every section: the GPU sizes, or the dry run's tiny ones."""

    device: str
    preset: str
    dtype: str  # the cva section's model precision
    tile: int  # square tiles of a 2x2 grid, batch 1 (CFG batch 2): the cva and trt shape bucket
    warmup: int  # untimed calls before the timed ones
    runs: int  # timed calls (the median is reported)
    kernel_tests: tuple[str, ...]  # pytest paths, relative to the repository
    kernel_markers: str | None  # pytest -m expression; None keeps pyproject's default selection
    kernel_canvases: tuple[tuple[int, int], ...] | None  # None: imagpose.kernels.bench's defaults
    kernel_levels: tuple[int, ...]
    bench_methods: tuple[str, ...] | None  # None: every method
    bench_settings: tuple[str, ...] | None  # None: every setting
    bench_fast_paths: tuple[str, ...]  # candidates; those that cannot run here are left out with the reason
    bench_fast_path_scenarios: bool  # time IMAGPose on each fast path (else only their output parity)
    bench_size: str  # "full", or "tiny" for the dry run
    bench_loop_limit: int | None  # steps run per loop (the rest extrapolated); None: every step
    bench_warmup: int
    bench_repeats: int
    parity_steps: int
    train_autocast: str | None  # the train section's autocast dtype over fp32 weights; None: plain fp32
    train_warmup: int  # untimed optimiser steps per stage
    train_runs: int  # timed optimiser steps per stage (the median is reported)


# the sd15 training preset's per-GPU batch sizes (train/presets/sd15.yaml, the official ones; a test keeps them equal)
TRAIN_BATCH_SIZES = {"stage1": 2, "stage2": 4, "end2end": 1}


def gpu_plan(tile: int) -> Plan:
    return Plan(device="cuda", preset="sd15", dtype="float16", tile=tile, warmup=2, runs=10,
                kernel_tests=("tests/kernels",), kernel_markers="not slow and not bench", kernel_canvases=None,
                kernel_levels=(0, 1, 2, 3), bench_methods=None, bench_settings=None,
                bench_fast_paths=("triton-cva", "onnxruntime", "tensorrt"), bench_fast_path_scenarios=True,
                bench_size="full", bench_loop_limit=None, bench_warmup=1, bench_repeats=3, parity_steps=10,
                train_autocast="bfloat16", train_warmup=2, train_runs=5)


# fp32 on the CPU (fp16 convolutions are no CPU path); two kernel test files instead of the whole folder (under
# the interpreter the folder takes minutes); IMAGPose as released on the tiny preset, eager only (a fast path at
# the benchmark's tile size takes minutes here), and the Triton CVA's output parity (64x64 tiles, one step)
DRY_RUN = Plan(device="cpu", preset="tiny", dtype="float32", tile=64, warmup=0, runs=1,
               kernel_tests=("tests/kernels/test_join.py", "tests/kernels/test_layer_norm.py"), kernel_markers=None,
               kernel_canvases=((64, 64),), kernel_levels=(0,), bench_methods=("imagpose",),
               bench_settings=("as_released",), bench_fast_paths=("triton-cva",), bench_fast_path_scenarios=False,
               bench_size="tiny", bench_loop_limit=1, bench_warmup=0, bench_repeats=1, parity_steps=1,
               train_autocast=None, train_warmup=1, train_runs=1)


class CheckFailed(Exception):
    """A section ran to its end and what it checked failed (tests, scenarios or parity); its results say which."""


Record = Callable[[str, object], None]


def require_device(device: str) -> None:
    import torch

    from imagpose.errors import DeviceError

    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("No CUDA GPU is visible here (torch.cuda.is_available() is False); run on the device "
                          "machine, or rehearse every section on the CPU with --dry-run.")


def bucket_of(plan: Plan):
    from imagpose.export import ShapeBucket

    return ShapeBucket(1, plan.tile, plan.tile, 2, 2)


# ----------------------------------------------------------------------------- sections
def env_section(plan: Plan, args, record: Record) -> None:
    # nvidia-smi first and without torch: it shows the GPU and driver even if torch or imagpose cannot start
    record("nvidia_smi", nvidia_smi())
    record("interpreter", {"python": sys.version.split()[0], "executable": sys.executable,
                           "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
                           "PYTHONPATH": os.environ.get("PYTHONPATH")})
    import torch

    import imagpose
    from imagpose.cli.env import collect

    info = collect()
    location = Path(imagpose.__file__).resolve().parent
    info["imagpose_location"] = str(location)
    info["imagpose_from_checkout"] = location.is_relative_to(REPO)
    record("versions", info)
    # should be empty: the repository's top-level folders are packages only as imagpose.* (docs/gpu.md)
    record("top_level_folders_importable", [name for name in ("bench", "export", "kernels", "train")
                                            if importlib.util.find_spec(name) is not None])
    # what the sections import beyond `imagpose env`'s list
    record("section_dependencies", {name: version_of(name) for name in (
        "polygraphy", "onnx_graphsurgeon", "torchmetrics", "matplotlib", "psutil", "pytest")})
    import onnxruntime

    record("onnxruntime_providers", onnxruntime.get_available_providers())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        record("gpu", {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                       "memory_gib": round(props.total_memory / 2**30, 1),
                       "multiprocessors": props.multi_processor_count})


def nvidia_smi() -> str:
    query = "name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit"
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv"], capture_output=True,
                              text=True, timeout=30)
    except FileNotFoundError:
        return "nvidia-smi not found (no NVIDIA driver here)"
    except subprocess.TimeoutExpired:
        return "nvidia-smi did not answer within 30 s"
    return (done.stdout or done.stderr).strip()


def version_of(name: str) -> str:
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # any import failure means "not usable here"; the message says why
        return f"not available ({type(exc).__name__}: {exc})"
    return getattr(module, "__version__", "installed")


def cva_section(plan: Plan, args, record: Record) -> None:
    record("setup", {"preset": plan.preset, "dtype": plan.dtype, "device": plan.device,
                     "tile": f"{plan.tile}x{plan.tile}", "grid": "2x2", "cfg_batch": 2})
    import torch

    from imagpose.export import CONTRACTS, axis_values, model_config
    from imagpose.export.parity import sqnr_db
    from imagpose.presets import build_pipeline
    from imagpose.timing import Stopwatch, time_runs

    require_device(plan.device)
    dtype = getattr(torch, plan.dtype)
    with Stopwatch(plan.device) as build:
        pipe = build_pipeline(plan.preset, seed=0, device=plan.device, dtype=dtype)
    bucket = bucket_of(plan)
    inputs = CONTRACTS["unet"].sample_inputs(axis_values(bucket, model_config(pipe)), dtype, device=plan.device)
    record("setup", {"preset": plan.preset, "dtype": plan.dtype, "device": plan.device, "bucket": bucket.label(),
                     "sample": list(inputs[0].shape), "build_s": round(build.seconds, 1)})
    unet, grid = pipe.torch_runtime().unet, (bucket.rows, bucket.cols)
    outputs = {}

    def step():  # keeps the output of the last call for the SQNR (the inputs are fixed: every call is the same)
        outputs[backend] = unet(*inputs, grid)

    with torch.no_grad():
        for backend in ("eager", "sdpa", "triton"):
            pipe.unet.set_cva_backend(backend)
            times = time_runs(step, plan.device, warmup=plan.warmup, runs=plan.runs)  # warm-up compiles (triton)
            eager, out = outputs["eager"].float(), outputs[backend].float()
            record(backend, {"median_ms": round(times.median * 1e3, 3), "warmup": plan.warmup, "runs": plan.runs,
                             "sqnr_db_vs_eager": None if backend == "eager" else round(sqnr_db(eager, out), 1),
                             "max_abs_vs_eager": float((eager - out).abs().max())})
    pipe.unet.set_cva_backend("eager")


def kernels_section(plan: Plan, args, record: Record) -> None:
    import pytest

    from imagpose.kernels.bench import KERNELS, run_kernel_benchmark
    from imagpose.timing import Stopwatch

    require_device(plan.device)
    tally = TestTally(lambda counts: record("tests", {"paths": list(plan.kernel_tests), **counts}))
    marker_args = ["-m", plan.kernel_markers] if plan.kernel_markers else []
    with Stopwatch() as watch:
        # in this process: the child is the section's own, and a second interpreter would import torch again
        code = pytest.main([*(str(REPO / path) for path in plan.kernel_tests), "-q", "-p", "no:cacheprovider",
                            "--rootdir", str(REPO), "-c", str(REPO / "pyproject.toml"), *marker_args,
                            "-W", "ignore::pytest.PytestAssertRewriteWarning"],  # modules this process imported
                           plugins=[tally])
    record("tests", {"paths": list(plan.kernel_tests), "exit_code": int(code), **tally.counts,
                     "seconds": round(watch.seconds, 1)})
    canvases = {} if plan.kernel_canvases is None else {"canvases": plan.kernel_canvases}
    for kernel in KERNELS:
        rows = run_kernel_benchmark(plan.device, kernels=(kernel,), levels=plan.kernel_levels, **canvases)
        record(f"bench_{kernel}", [{key: row[key] for key in (
            "canvas", "level", "channels", "positions", "dtype", "provider", "median_ms", "gbps", "floor_ms",
            "floor_ratio")} for row in rows])
    if code != 0:
        raise CheckFailed(f"kernel tests: pytest exit code {int(code)}, {tally.counts['failed']} failed, "
                          f"{tally.counts['errors']} errors")


class TestTally:
    """pytest plugin: outcome counts and the ids of failed tests, passed to ``on_change`` after every test (a
    section stopped by its budget keeps the counts so far)."""

    def __init__(self, on_change: Callable[[dict], None]):
        self.on_change = on_change
        self.counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "failures": []}

    def pytest_runtest_logreport(self, report) -> None:
        if report.passed and report.when != "call":
            return  # a passing setup or teardown is no outcome of its own
        if report.skipped:
            outcome = "skipped"
        elif report.passed:
            outcome = "passed"
        else:
            outcome = "failed" if report.when == "call" else "errors"
            self.counts["failures"].append(report.nodeid)
        self.counts[outcome] += 1
        self.on_change(self.counts)


def bench_section(plan: Plan, args, record: Record) -> None:
    record("setup", {"size": plan.bench_size, "device": plan.device, "warmup": plan.bench_warmup,
                     "repeats": plan.bench_repeats, "loop_limit": plan.bench_loop_limit})
    from imagpose.bench.fast_paths import backend_factories
    from imagpose.bench.harness import run_suite
    from imagpose.bench.report import write_report
    from imagpose.bench.scenarios import METHODS, SETTINGS, build_suite
    from imagpose.export.parity import fast_path_parity

    require_device(plan.device)
    fast_paths, left_out = fast_paths_here(plan.device, plan.bench_fast_paths)
    timed = fast_paths if plan.bench_fast_path_scenarios else []
    record("fast_paths", {"timed": timed, "parity": fast_paths, "left_out": left_out})
    suite = build_suite(plan.bench_methods or METHODS, plan.bench_settings or SETTINGS, ("eager", *timed))
    scenarios = [replace(s, size=plan.bench_size, loop_limit=plan.bench_loop_limit) for s in by_priority(suite)]
    work = Path(args.workdir) / "bench"
    factories = backend_factories(timed, work)
    report_dir = Path(args.out) / "bench"
    environment, results = None, []
    for scenario in scenarios:
        suite_result = run_suite([scenario], plan.device, plan.bench_warmup, plan.bench_repeats,
                                 backend_factories=factories)
        environment = suite_result["environment"]
        results += suite_result["results"]
        record("scenarios", [scenario_row(r) for r in results])
        write_report({"environment": environment, "results": results}, report_dir)  # complete after each scenario
    parity = fast_path_parity(fast_paths, plan.device, work / "parity", steps=plan.parity_steps)
    record("parity", parity["rows"])
    paths = write_report({"environment": environment, "results": results}, report_dir, parity)
    record("report", {name: str(path) for name, path in paths.items()})
    failed = [r["label"] for r in results if r["error"]] + [r["backend"] for r in parity["rows"] if "error" in r]
    if failed:
        raise CheckFailed(f"{len(failed)} benchmark scenarios or parity rows failed: {', '.join(failed)}")


def fast_paths_here(device: str, candidates: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """The ``candidates`` that can run on ``device`` here, and why each other one is left out."""
    import onnxruntime

    from imagpose.errors import MissingDependencyError
    from imagpose.export.trt_build import import_tensorrt

    problems = {}
    provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    if provider not in onnxruntime.get_available_providers():
        problems["onnxruntime"] = (f"this onnxruntime has no {provider} (it has "
                                   f"{', '.join(onnxruntime.get_available_providers())})")
    try:
        import_tensorrt()
    except MissingDependencyError as exc:
        problems["tensorrt"] = str(exc)
    return [c for c in candidates if c not in problems], {c: problems[c] for c in candidates if c in problems}


def by_priority(scenarios: list) -> list:
    """As released first: IMAGPose (eager, then each fast path), IMAGPose*, the baselines, then the TensorRT
    scenarios (their engines build first: minutes); then the common policy."""
    method_rank = {"imagpose": 0, "imagpose_star": 1}
    return sorted(scenarios, key=lambda s: (s.setting != "as_released", s.backend == "tensorrt",
                                            method_rank.get(s.method, 2)))


def scenario_row(result: dict) -> dict:
    return {"label": result["label"], "seconds_per_image": result["seconds_per_image"],
            "tflop_per_image_full": result["tflops_per_image_full"], "tflop_per_s": result["achieved_tflops_per_s"],
            "mfu": result["mfu"], "peak_memory_gib": result["peak_memory_gib"], "error": result["error"]}


def trt_section(plan: Plan, args, record: Record) -> None:
    record("setup", {"preset": plan.preset, "device": plan.device, "tile": f"{plan.tile}x{plan.tile}",
                     "grid": "2x2", "onnx_dtype": "fp16"})
    from imagpose.errors import DeviceError, MissingDependencyError
    from imagpose.export import ExportOptions, export_pipeline
    from imagpose.export.runtime import prepare_runtime, runtime_folders
    from imagpose.export.trt_build import BuildOptions, BuildTarget, build_engines
    from imagpose.export.trt_check import check_onnx_for_trt, has_blockers
    from imagpose.presets import build_pipeline
    from imagpose.timing import Stopwatch

    require_device(plan.device)
    pipe = build_pipeline(plan.preset, seed=0, device=plan.device)
    bucket, work = bucket_of(plan), Path(args.workdir) / "trt"
    onnx_dir, engine_dir = runtime_folders(work, "fp16")  # where prepare_runtime looks: the export is reused
    with Stopwatch(plan.device) as watch:
        (unet,) = export_pipeline(pipe, onnx_dir, ExportOptions(dtype="fp16", bucket=bucket), components=("unet",))
    record("export", {"file": str(unet.path), "megabytes": round(unet.size_bytes / 2**20, 1), "reused": unet.reused,
                      "node_counts": unet.node_counts, "seconds": round(watch.seconds, 1)})
    findings = check_onnx_for_trt(unet.path)
    record("check_trt", {"blockers": [f.format() for f in findings if f.severity == "blocker"],
                         "warnings": len([f for f in findings if f.severity != "blocker"]),
                         "passed": not has_blockers(findings)})
    plans = build_engines(onnx_dir, engine_dir, BuildOptions(buckets=(bucket,), components=("unet",)), dry_run=True)
    record("engine_plan", [{"engine": p.engine_path.name, "profile": {k: [list(s) for s in v]
                                                                      for k, v in p.profile.items()},
                            "trtexec": p.trtexec_command()} for p in plans])
    try:
        BuildTarget.current(plan.device)  # the check prepare_runtime makes before it builds anything
    except (MissingDependencyError, DeviceError) as exc:
        record("stopped_before_builder", str(exc))
        return
    with Stopwatch(plan.device) as watch:
        runtime = prepare_runtime("tensorrt", pipe, work, bucket, dtype="fp16")
    record("build", {"seconds": round(watch.seconds, 1), "engines": str(engine_dir)})
    trt_latency_and_parity(plan, pipe, runtime, bucket, record)


def trt_latency_and_parity(plan: Plan, pipe, runtime, bucket, record: Record) -> None:
    import torch

    from imagpose import scenarios
    from imagpose.export import CONTRACTS, axis_values, model_config
    from imagpose.export.parity import CastRuntime, run_parity
    from imagpose.presets import build_pipeline
    from imagpose.samples import sample
    from imagpose.timing import time_runs

    pipe16 = build_pipeline(plan.preset, seed=0, device=plan.device, dtype=torch.float16)
    inputs = CONTRACTS["unet"].sample_inputs(axis_values(bucket, model_config(pipe)), torch.float16,
                                             device=plan.device)
    grid = (bucket.rows, bucket.cols)
    with torch.no_grad():
        torch_ms = time_runs(lambda: pipe16.torch_runtime().unet(*inputs, grid), plan.device, plan.warmup,
                             plan.runs).median * 1e3
        trt_ms = time_runs(lambda: runtime.unet(*inputs, grid), plan.device, plan.warmup, plan.runs).median * 1e3
    record("unet_step_ms", {"torch_fp16": round(torch_ms, 3), "tensorrt_fp16": round(trt_ms, 3),
                            "speedup": round(torch_ms / trt_ms, 2)})
    request = scenarios.t2(*sample("person_red_front"), sample("person_red_walking")[1],
                           tile_size=(plan.tile, plan.tile), seed=0)
    report = run_parity(pipe, {"tensorrt": runtime}, bucket, [request], steps=3,
                        lowp_reference=CastRuntime(pipe16.torch_runtime(), torch.float16), lowp_backends=("tensorrt",))
    record("parity", report.to_dict())
    if not report.passed:
        raise CheckFailed("TensorRT fp16 parity against fp32 PyTorch failed; see the parity rows")


def quant_section(plan: Plan, args, record: Record) -> None:
    """The UNet in fp16, INT8 and FP8 (Model Optimizer, calibrated on generated people; imagpose.export.quantize):
    export and check-trt of each; with tensorrt, one engine each (FP8 needs compute capability 8.9+), their step
    latency and SQNR against the fp32 PyTorch UNet on the inputs of a real pipeline call."""
    record("setup", {"preset": plan.preset, "device": plan.device, "tile": f"{plan.tile}x{plan.tile}", "grid": "2x2",
                     "calibration": f"2 generated people x {plan.parity_steps} steps", "weights": "random"})
    import torch

    from imagpose.errors import DeviceError, IMAGPoseError, MissingDependencyError
    from imagpose.export import ExportOptions, export_pipeline
    from imagpose.export.parity import sqnr_db
    from imagpose.export.quantize import QuantizeOptions, export_quantized_unet, generated_requests, record_unet_calls
    from imagpose.export.trt_build import BuildOptions, BuildTarget, build_engines
    from imagpose.export.trt_check import check_onnx_for_trt, has_blockers
    from imagpose.presets import build_pipeline
    from imagpose.timing import Stopwatch, time_runs

    require_device(plan.device)
    pipe = build_pipeline(plan.preset, seed=0, device=plan.device)
    bucket, work = bucket_of(plan), Path(args.workdir) / "quant"
    requests = generated_requests(2, (plan.tile, plan.tile))
    folders = {"fp16": work / "fp16"}
    export_pipeline(pipe, folders["fp16"], ExportOptions(dtype="fp16", bucket=bucket), components=("unet",))
    for precision in ("int8", "fp8"):
        with Stopwatch(plan.device) as watch:
            folders[precision] = export_quantized_unet(pipe, work / precision, requests, precision,
                                                       QuantizeOptions(precision, steps=plan.parity_steps))
        unet = folders[precision] / "unet.onnx"
        findings = check_onnx_for_trt(unet)
        record(f"{precision}_export", {"megabytes": round(unet.stat().st_size / 2**20, 1),
                                       "seconds": round(watch.seconds, 1),
                                       "check_trt_passed": not has_blockers(findings),
                                       "blockers": [f.format() for f in findings if f.severity == "blocker"]})
        if has_blockers(findings):
            raise CheckFailed(f"check-trt found blockers in the {precision} UNet")
    try:
        target = BuildTarget.current(plan.device)
    except (MissingDependencyError, DeviceError) as exc:
        record("stopped_before_builder", str(exc))
        return
    from imagpose.export.runtime.tensorrt_backend import TensorRTBackend

    call = record_unet_calls(pipe, requests[:1], steps=plan.parity_steps)[-1]  # the last step: the finest details
    with torch.no_grad():
        reference = pipe.torch_runtime().unet(*call.inputs, call.grid).float()
    for precision, folder in folders.items():
        if precision == "fp8" and target.compute_capability < (8, 9):
            record(precision, {"skipped": f"FP8 needs compute capability 8.9+, this GPU is {target.describe()}"})
            continue
        try:
            engines = work / "engines" / precision
            with Stopwatch(plan.device) as watch:
                build_engines(folder, engines, BuildOptions(buckets=(bucket,), components=("unet",)), target=target)
            runtime = TensorRTBackend(engines, device=plan.device)
            with torch.no_grad():
                step_ms = time_runs(lambda runtime=runtime: runtime.unet(*call.inputs, call.grid), plan.device,
                                    plan.warmup, plan.runs).median * 1e3
                sqnr = sqnr_db(reference, runtime.unet(*call.inputs, call.grid).float())
            record(precision, {"build_seconds": round(watch.seconds, 1), "step_ms": round(step_ms, 3),
                               "sqnr_db_vs_fp32": round(sqnr, 2)})
        except IMAGPoseError as exc:  # one precision failing to build is a result; the others still run
            record(precision, {"error": f"{type(exc).__name__}: {exc}"})


SERVE_CLIENTS = (1, 4, 16)


def serve_section(plan: Plan, args, record: Record) -> None:
    """The Triton repository of the TensorRT engines (imagpose.serving.triton): fp16 engines of every network at the
    plan's bucket, the tensorrt_plan repository written from them and validated offline (Triton's config schema,
    shapes against the engines' profiles); then the TensorRT pipeline's latency and throughput at 1, 4 and 16
    concurrent clients (the batching SDK). Serving the repository itself needs a tritonserver with the tensorrt
    backend (NVIDIA's container, docs/serving.md); with one on PATH the repository is also served and loaded.
    Without tensorrt (the dry run) the python flavour's repository is written and validated, and the clients
    are timed on the PyTorch runtime."""
    record("setup", {"preset": plan.preset, "device": plan.device, "tile": f"{plan.tile}x{plan.tile}", "grid": "2x2",
                     "clients": list(SERVE_CLIENTS), "weights": "random"})
    from imagpose.errors import DeviceError, MissingDependencyError
    from imagpose.export import ExportOptions
    from imagpose.export.runtime import prepare_runtime, runtime_folders
    from imagpose.export.trt_build import BuildTarget
    from imagpose.presets import build_pipeline
    from imagpose.serving.triton.repository import RepositoryOptions, write_repository
    from imagpose.serving.triton.validate import validate_repository
    from imagpose.timing import Stopwatch

    require_device(plan.device)
    pipe = build_pipeline(plan.preset, seed=0, device=plan.device)
    bucket, work = bucket_of(plan), Path(args.workdir) / "serve"
    try:
        BuildTarget.current(plan.device)
        runtime_name = "tensorrt"
    except (MissingDependencyError, DeviceError) as exc:
        record("no_tensorrt", str(exc))
        runtime_name = None
    with Stopwatch(plan.device) as watch:
        if runtime_name == "tensorrt":
            runtime = prepare_runtime("tensorrt", pipe, work, bucket, dtype="fp16")
            engines = runtime_folders(work, "fp16")[1]
            repo = write_repository(pipe, work / "repo", RepositoryOptions("tensorrt"), engines_dir=engines)
        else:
            runtime = None
            repo = write_repository(pipe, work / "repo", RepositoryOptions("python"),
                                    export_options=ExportOptions(bucket=bucket))
    problems = validate_repository(repo)
    record("repository", {"flavour": "tensorrt" if runtime_name else "python", "path": str(repo),
                          "models": sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file()),
                          "problems": problems, "seconds": round(watch.seconds, 1)})
    if problems:
        raise CheckFailed("the Triton repository does not validate; see its problems")
    record("concurrent_clients", concurrent_client_stats(plan, pipe, runtime, bucket))
    server = shutil.which("tritonserver")
    record("tritonserver", server or "not on PATH: serve the repository with NVIDIA's container (docs/serving.md)")


def concurrent_client_stats(plan: Plan, pipe, runtime, bucket) -> dict:
    """Requests per second and latency percentiles of the batching SDK at each client count (each client submits
    its requests one after the other, from its own thread)."""
    import statistics

    from imagpose import scenarios
    from imagpose.samples import sample
    from imagpose.sdk import IMAGPoseGenerator

    steps = 20 if plan.device == "cuda" else 1
    per_client = 4 if plan.device == "cuda" else 1
    image, pose = sample("person_red_front")
    target = sample("person_red_walking")[1]

    def request(seed: int):
        return scenarios.t2(image, pose, target, tile_size=(plan.tile, plan.tile), seed=seed)

    stats = {}
    with IMAGPoseGenerator(pipe, runtime=runtime, max_batch=bucket.batch, num_inference_steps=steps) as generator:
        generator.generate([request(0)])  # warm-up
        for clients in SERVE_CLIENTS:
            latencies, seconds = drive_clients(generator, request, clients, per_client)
            ordered = sorted(latencies)
            stats[str(clients)] = {"requests": len(latencies), "requests_per_s": round(len(latencies) / seconds, 3),
                                   "p50_s": round(statistics.median(ordered), 4),
                                   "p95_s": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 4),
                                   "steps": steps}
    return stats


def drive_clients(generator, request, clients: int, per_client: int) -> tuple[list[float], float]:
    """``clients`` threads, each submitting ``per_client`` requests in turn: every latency, and the wall time."""
    import threading
    import time

    latencies: list[float] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        for k in range(per_client):
            start = time.perf_counter()
            generator.submit(request(index * per_client + k)).result()
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - start


def train_section(plan: Plan, args, record: Record) -> None:
    """One optimiser step (forward, backward, clip 1.0, AdamW) of each stage as the trainer takes it, timed after a
    warm-up. Written against imagpose.train.stages / objective directly, not the training loop: the loop's data,
    checkpoints and validation are not what this measures. Fresh weights and random tensors of the training
    item's shapes (time and memory do not depend on the values)."""
    record("setup", {"preset": plan.preset, "device": plan.device, "tile": f"{plan.tile}x{plan.tile}", "grid": "2x2",
                     "autocast": plan.train_autocast or "none (fp32)", "weights": "float32",
                     "gradient_checkpointing": True, "batch_sizes": TRAIN_BATCH_SIZES, "warmup": plan.train_warmup,
                     "runs": plan.train_runs})
    from imagpose.train.config import STAGES

    require_device(plan.device)
    vae, image_encoder = frozen_encoders(plan)
    for stage in STAGES:
        record(stage, train_step_stats(plan, stage, vae, image_encoder))


def frozen_encoders(plan: Plan):
    """The preset's VAE and image encoder, frozen, in the autocast dtype (as the training loop casts them)."""
    import torch
    from transformers import Dinov2Config

    from imagpose.autoencoders import build_autoencoder
    from imagpose.models import IMAGPoseImageEncoder
    from imagpose.presets import get_preset

    spec = get_preset(plan.preset)
    dtype = getattr(torch, plan.train_autocast) if plan.train_autocast else torch.float32
    with torch.device(plan.device):
        vae = build_autoencoder(spec.vae_class, spec.vae)
        image_encoder = IMAGPoseImageEncoder(Dinov2Config(**spec.image_encoder))
    return [module.to(dtype).requires_grad_(False).eval() for module in (vae, image_encoder)]


def synthetic_batch(batch_size: int, tile: int, device: str, generator) -> dict:
    """Random tensors of the training item's shapes and ranges (imagpose.train.data), stacked: a 2x2 canvas of
    square tiles, the first tile visible, the other three targets."""
    import torch

    canvas = 2 * tile

    def uniform(*shape, low=-1.0, high=1.0):
        return low + (high - low) * torch.rand(shape, generator=generator)

    flag = torch.zeros(batch_size, 1, canvas // 8, canvas // 8)
    flag[:, :, : tile // 8, : tile // 8] = 1
    target = uniform(batch_size, 3, canvas, canvas)
    visible = torch.nn.functional.interpolate(flag, scale_factor=8) > 0
    batch = dict(target_pixels=target, masked_pixels=torch.where(visible, target, -1.0),
                 pose=uniform(batch_size, 3, canvas, canvas, low=0.0), flag=flag,
                 dino_pixels=torch.randn(batch_size, 3, 224, 224, generator=generator),
                 reference_pixels=uniform(batch_size, 3, canvas, canvas))
    return {**{k: v.to(device) for k, v in batch.items()}, "grid": (2, 2)}


def train_step_stats(plan: Plan, stage: str, vae, image_encoder) -> dict:
    import torch

    from imagpose.timing import time_runs
    from imagpose.train.loop import trainable_parameters
    from imagpose.train.objective import STAGE_DROPOUT, draw_objective, training_loss, training_scheduler
    from imagpose.train.stages import build_trainable, count_trainable

    if plan.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = build_trainable(stage, plan.preset, seed=0, device=plan.device).train()
    model.unet.enable_gradient_checkpointing()
    parameters = trainable_parameters(model)
    optimizer = torch.optim.AdamW(parameters, lr=1e-5, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    batch_size = TRAIN_BATCH_SIZES[stage]
    generator = torch.Generator().manual_seed(0)
    batch = synthetic_batch(batch_size, plan.tile, plan.device, generator)
    latent = (4, 2 * plan.tile // 8, 2 * plan.tile // 8)
    scheduler = training_scheduler()
    losses = []

    def step():
        draws = draw_objective(generator, batch_size, latent, STAGE_DROPOUT[stage], 0.05).to(plan.device)
        with torch.autocast(torch.device(plan.device).type, dtype=getattr(torch, plan.train_autocast or "float32"),
                            enabled=plan.train_autocast is not None):
            loss, _ = training_loss(model, vae, image_encoder, scheduler, batch, draws, snr_gamma=5.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))  # a host sync per step, as a training loop's logging makes

    times = time_runs(step, plan.device, warmup=plan.train_warmup, runs=plan.train_runs)
    stats = {"batch_size": batch_size, "trainable_parameters": count_trainable(model),
             "step_s_median": round(times.median, 4), "samples_per_s": round(batch_size / times.median, 3),
             "peak_memory_gib": (round(torch.cuda.max_memory_allocated() / 2**30, 2) if plan.device == "cuda"
                                 else None),
             "losses": [round(value, 5) for value in losses], "finite": all(map(math.isfinite, losses))}
    if not stats["finite"]:  # the stage's model and optimizer state are freed on return, before the next stage
        raise CheckFailed(f"{stage}: a non-finite training loss {losses}")
    return stats


@dataclass(frozen=True)
class Section:
    name: str
    budget_s: float
    run: Callable[[Plan, argparse.Namespace, Record], None]


SECTIONS = (Section("env", 30, env_section), Section("cva", 100, cva_section),
            Section("kernels", 100, kernels_section), Section("bench", 130, bench_section),
            Section("trt", 120, trt_section), Section("train", 240, train_section),
            Section("quant", 240, quant_section), Section("serve", 120, serve_section))
SECTION_NAMES = tuple(s.name for s in SECTIONS)


# ----------------------------------------------------------------------------- the child process
class Recorder:
    """A section's results so far, written to its status file after every record."""

    def __init__(self, path: Path):
        self.path, self.results = path, {}

    def __call__(self, key: str, value) -> None:
        self.results[key] = value
        self.write("running")

    def write(self, status: str, **extra) -> None:
        write_json(self.path, {"status": status, "pid": os.getpid(), "results": self.results, **extra})


def run_child(args) -> int:
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton (the parent sets it too)
    plan = DRY_RUN if args.dry_run else gpu_plan(args.tile)
    section = next(s for s in SECTIONS if s.name == args.section)
    record = Recorder(Path(args.status_file))
    try:
        section.run(plan, args, record)
    except Exception as exc:  # reported in the section's entry; the traceback shows where
        record.write("error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        return 1
    record.write("ok")
    return 0
