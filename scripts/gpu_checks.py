"""Every GPU-only check of the project in one call; writes a markdown + JSON report.

On the device machine (see docs/gpu.md for the wheels to carry: diffusers and the export helpers are not in
its image, tensorrt neither):

    python3 scripts/gpu_checks.py --out $OUT                 # all sections that can run there
    python3 scripts/gpu_checks.py --out $OUT --only trt      # one section

Sections (each reports "skipped: <reason>" instead of failing when something it needs is missing):
    env       GPU, driver, versions
    kernels   the Triton CVA kernel tests on CUDA, then the kernel benchmark (eager / sdpa / triton at the
              UNet levels of the 512x384 and 1024x1024 canvases: time, GB/s, fraction of the HBM floor)
    cva       the CVA module and the whole full-size UNet step, eager vs triton CVA (fp16, CUDA events)
    trt       full-size UNet: fp16 ONNX -> static TensorRT engine (1 x 512x512 tiles, 2x2, CFG batch 2);
              step latency TensorRT vs torch fp16 eager (median of timed runs after warm-up, CUDA events);
              parity of TensorRT and torch fp16 against torch fp32 (SQNR dB, max abs)
    bench     the full-size benchmark suite (imagpose bench --device cuda): report, JSON, CSV, plots
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

SECTIONS = {}


def section(name):
    def register(fn):
        SECTIONS[name] = fn
        return fn

    return register


def cuda_median_ms(fn, warmup: int = 3, runs: int = 10) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


@section("env")
def env_section(args) -> dict:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                          "--format=csv,noheader"], capture_output=True, text=True)
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "nvidia_smi": smi.stdout.strip()}
    for name in ("diffusers", "transformers", "onnx", "onnxruntime", "tensorrt", "triton"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


@section("kernels")
def kernels_section(args) -> dict:
    tests = subprocess.run([sys.executable, "-m", "pytest", "tests/kernels", "-q", "-p", "no:cacheprovider"],
                           capture_output=True, text=True)
    from imagpose.kernels.bench import run_kernel_benchmark

    return {"tests_passed": tests.returncode == 0, "tests_tail": tests.stdout[-1500:],
            "benchmark": run_kernel_benchmark("cuda")}


@section("cva")
def cva_section(args) -> dict:
    from imagpose.export import ShapeBucket, axis_values, model_config
    from imagpose.export.components import CONTRACTS
    from imagpose.export.parity import sqnr_db
    from imagpose.presets import build_pipeline

    pipe = build_pipeline("sd15", seed=0, device="cuda", dtype=torch.float16)
    bucket = ShapeBucket(1, args.tile, args.tile, 2, 2)
    inputs = [t.cuda() for t in CONTRACTS["unet"].sample_inputs(axis_values(bucket, model_config(pipe)))]
    inputs = [t.half() if i != 1 else t for i, t in enumerate(inputs)]
    runtime, out = pipe.torch_runtime(), {}
    with torch.no_grad():
        for backend in ("eager", "sdpa", "triton"):
            pipe.unet.set_cva_backend(backend)
            out[backend] = (runtime.unet(*inputs, (2, 2)).float(),
                            cuda_median_ms(lambda: runtime.unet(*inputs, (2, 2))))
    return {"unet_step_ms": {b: round(v[1], 2) for b, v in out.items()},
            "speedup_triton_vs_eager": round(out["eager"][1] / out["triton"][1], 3),
            "sqnr_db_vs_eager": {b: round(sqnr_db(out["eager"][0], v[0]), 1) for b, v in out.items() if b != "eager"}}


@section("trt")
def trt_section(args) -> dict:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return {"skipped": "tensorrt is not installed on this machine (pip install 'imagpose[trt]' needs "
                           "NVIDIA's index); the ONNX export and check-trt run everywhere"}
    from imagpose.export import ExportOptions, ShapeBucket, axis_values, export_pipeline, model_config
    from imagpose.export.components import CONTRACTS
    from imagpose.export.parity import sqnr_db
    from imagpose.export.runtime.tensorrt_backend import TensorRTBackend
    from imagpose.export.trt_build import BuildOptions, build_engines
    from imagpose.export.trt_check import check_onnx_for_trt, has_blockers
    from imagpose.presets import build_pipeline

    bucket = ShapeBucket(1, args.tile, args.tile, 2, 2)
    work = Path(args.workdir)
    pipe32 = build_pipeline("sd15", seed=0, device="cuda")
    pipe16 = build_pipeline("sd15", seed=0, device="cuda", dtype=torch.float16)
    onnx_dir, engine_dir = work / "onnx_fp16", work / "engines"
    start = time.perf_counter()
    export_pipeline(pipe16, onnx_dir, ExportOptions(dtype="fp16", opset=17, bucket=bucket), components=("unet",))
    export_s = time.perf_counter() - start
    findings = check_onnx_for_trt(onnx_dir / "unet.onnx")
    start = time.perf_counter()
    build_engines(onnx_dir, engine_dir, BuildOptions(buckets=(bucket,), components=("unet",),
                                                     timing_cache=str(work / "timing.cache")))
    build_s = time.perf_counter() - start
    backend = TensorRTBackend(engine_dir, cuda_graph=args.cuda_graph)
    inputs32 = [t.cuda() for t in CONTRACTS["unet"].sample_inputs(axis_values(bucket, model_config(pipe32)))]
    inputs16 = [t.half() if i != 1 else t for i, t in enumerate(inputs32)]
    grid = (2, 2)
    with torch.no_grad():
        ref = pipe32.torch_runtime().unet(*inputs32, grid).float()
        out16 = pipe16.torch_runtime().unet(*inputs16, grid).float()
        out_trt = backend.unet(*inputs16, grid).float()
        torch_ms = cuda_median_ms(lambda: pipe16.torch_runtime().unet(*inputs16, grid))
        trt_ms = cuda_median_ms(lambda: backend.unet(*inputs16, grid))
    return {
        "bucket": bucket.label(), "sample": list(inputs32[0].shape), "export_s": round(export_s, 1),
        "build_s": round(build_s, 1), "check_trt_blockers": has_blockers(findings),
        "torch_fp16_step_ms": round(torch_ms, 2), "trt_fp16_step_ms": round(trt_ms, 2),
        "speedup": round(torch_ms / trt_ms, 2), "cuda_graph": args.cuda_graph,
        "sqnr_db": {"torch_fp16_vs_fp32": round(sqnr_db(ref, out16), 1),
                    "trt_fp16_vs_fp32": round(sqnr_db(ref, out_trt), 1)},
        "max_abs": {"torch_fp16": float((ref - out16).abs().max()), "trt_fp16": float((ref - out_trt).abs().max())},
        "parity_pass": sqnr_db(ref, out_trt) >= sqnr_db(ref, out16) - 6.0,
    }


@section("bench")
def bench_section(args) -> dict:
    from imagpose.bench.harness import run_suite
    from imagpose.bench.report import write_report as write_bench_report
    from imagpose.bench.scenarios import full_gpu_suite
    from imagpose.cli.bench import backend_factories, fast_path_parity

    backends = ["onnxruntime", "triton"]
    out = Path(args.out) / "bench"
    suite = run_suite(full_gpu_suite(tuple(backends)), "cuda", warmup=1, repeats=3,
                      backend_factories=backend_factories(backends, Path(args.workdir)))
    paths = write_bench_report(suite, out, fast_path_parity(backends, "cuda"))
    return {"report": str(paths["md"]), "results": [
        {k: r[k] for k in ("label", "seconds_per_image", "tflops_per_image_full", "mfu", "error")}
        for r in suite["results"]]}


def write_report(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_report.json").write_text(json.dumps(results, indent=2, default=str))
    lines = ["# imagpose GPU checks", ""]
    for name, data in results.items():
        lines += [f"## {name}", "", "```", json.dumps(data, indent=2, default=str), "```", ""]
    (out / "gpu_report.md").write_text("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/gpu", help="report folder")
    parser.add_argument("--only", action="append", choices=sorted(SECTIONS), help="run only these sections")
    parser.add_argument("--workdir", default=None, help="scratch folder for ONNX files and engines")
    parser.add_argument("--tile", type=int, default=512, help="tile size of the full-size checks")
    parser.add_argument("--cuda-graph", action="store_true", help="replay TensorRT engines as CUDA graphs")
    args = parser.parse_args(argv)
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="imagpose-gpu-")
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here", file=sys.stderr)
        return 2
    results = {}
    for name in args.only or SECTIONS:
        start = time.perf_counter()
        try:
            results[name] = SECTIONS[name](args)
        except Exception as exc:  # a broken section is reported, the others still run
            results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        results[name]["section_seconds"] = round(time.perf_counter() - start, 1)
        print(f"[{name}] {json.dumps(results[name], default=str)[:2000]}", flush=True)
        write_report(results, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
