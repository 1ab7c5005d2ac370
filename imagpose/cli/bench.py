"""Benchmark IMAGPose against PIDM, CFLD, PoCoLD and PCDMs (re-implemented from their public code, random
weights): seconds per generated image per stage, exact FLOPs, TFLOP/s and MFU, under "as released" and
"common policy" settings, with a verdict on the paper's speed claims and an output-parity section for the
fast paths. Writes report.md, results.json, results.csv and plots.

  imagpose bench --device cpu --quick          # reduced sizes, 2 steps per loop extrapolated: minutes
  imagpose bench --device cuda                 # the full-size suite on a GPU
  imagpose bench report outputs/bench/quick    # re-render a report from its results.json"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

NAME = "bench"
HELP = "speed benchmark vs PIDM / CFLD / PoCoLD / PCDMs, with a report and claim verdicts"


def add_arguments(parser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true",
                        help="reduced sizes at half resolution, 2 timed steps per loop (extrapolated)")
    parser.add_argument("--methods", default=None, help="comma-separated subset of imagpose, imagpose_star, pidm, "
                                                        "cfld, pocold, pcdms")
    parser.add_argument("--settings", default="as_released,common_policy", help="comma-separated settings")
    parser.add_argument("--backends", default=None,
                        help="IMAGPose fast paths to time besides eager (default: onnxruntime on CPU; "
                             "onnxruntime,tensorrt,triton on CUDA when available)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per scenario")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per scenario (median kept)")
    parser.add_argument("--no-parity", action="store_true", help="skip the fast-path output parity section")
    parser.add_argument("--out", default=None, help="report folder (default outputs/bench/<quick|full>)")
    sub = parser.add_subparsers(dest="bench_command", metavar="report", help="re-render a report")
    report = sub.add_parser("report", help="re-render report.md / plots from a results.json folder",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    report.add_argument("folder", help="folder holding results.json")


def run(args) -> int:
    from ..bench.report import write_report

    if args.bench_command == "report":
        data = json.loads((Path(args.folder) / "results.json").read_text())
        paths = write_report({"environment": data["environment"], "results": data["results"]}, args.folder,
                             data.get("parity"))
        print(f"report: {paths['md']}")
        return 0
    from ..bench.harness import run_suite
    from ..bench.scenarios import METHODS, Scenario

    methods = args.methods.split(",") if args.methods else list(METHODS)
    settings = args.settings.split(",")
    cuda = args.device.startswith("cuda")
    backends = args.backends.split(",") if args.backends else (["onnxruntime", "tensorrt", "triton"] if cuda
                                                               else ["onnxruntime"])
    size, loop_limit = ("reduced", 2) if args.quick else ("full", None)
    scenarios = [Scenario(m, s, size, loop_limit=loop_limit) for s in settings for m in methods]
    scenarios += [Scenario(m, "as_released", size, backend=b, loop_limit=loop_limit)
                  for b in backends if b != "eager" for m in methods if m.startswith("imagpose")]
    out = Path(args.out or f"outputs/bench/{'quick' if args.quick else 'full'}")
    start = time.perf_counter()
    suite = run_suite(scenarios, args.device, args.warmup, args.repeats or (1 if args.quick else 3),
                      backend_factories=backend_factories(backends, Path("outputs/onnx/bench")))
    parity = None if args.no_parity else fast_path_parity(backends, args.device)
    paths = write_report(suite, out, parity)
    print(f"bench: {len(scenarios)} scenarios in {time.perf_counter() - start:.0f} s; report {paths['md']}")
    for name, path in paths.items():
        if name != "md":
            print(f"  {name}: {path}")
    return 0


def backend_factories(backends, onnx_root: Path) -> dict:
    """IMAGPose fast paths: a function (method) -> Runtime for each backend that can run here. ONNX files are
    exported (once, cached by weights and options) under ``onnx_root``."""
    from ..pipeline import IMAGPosePipeline

    def pipeline_of(method):
        return IMAGPosePipeline(unet=method.unet, vae=method.vae, image_encoder=method.image_encoder,
                                flc_tokenizer=method.flc_tokenizer, pose_guider=method.pose_guider,
                                scheduler=method.scheduler)

    factories = {}
    if "onnxruntime" in backends:
        def onnxruntime_factory(method):
            from ..export import ExportOptions, ShapeBucket, export_pipeline
            from ..export.runtime.onnxruntime_backend import OnnxRuntimeBackend

            pipe = pipeline_of(method)
            folder = onnx_root / ("unet-" + "-".join(map(str, pipe.unet.config.block_out_channels)))
            export_pipeline(pipe, folder, ExportOptions(bucket=ShapeBucket(1, 128, 128, 2, 2)))
            providers = ["CUDAExecutionProvider"] if pipe.device.type == "cuda" else ["CPUExecutionProvider"]
            return OnnxRuntimeBackend.for_pipeline(pipe, folder, providers=providers)

        factories["onnxruntime"] = onnxruntime_factory
    if "tensorrt" in backends:
        def tensorrt_factory(method):
            from ..export import ExportOptions, ShapeBucket, export_pipeline
            from ..export.runtime.tensorrt_backend import TensorRTBackend
            from ..export.trt_build import BuildOptions, build_engines, import_tensorrt

            import_tensorrt()  # fail early, with the install hint, before exporting anything
            pipe = pipeline_of(method)
            tile = method.layout(method.info.released).padded_tile
            bucket = ShapeBucket(1, *tile, 2, 2)
            folder = onnx_root / ("trt-" + "-".join(map(str, pipe.unet.config.block_out_channels)))
            export_pipeline(pipe, folder / "onnx", ExportOptions(dtype="fp16", bucket=bucket))
            build_engines(folder / "onnx", folder / "engines", BuildOptions(buckets=(bucket,)))
            return TensorRTBackend(folder / "engines")

        factories["tensorrt"] = tensorrt_factory
    if "triton" in backends:
        def triton_factory(method):
            method.unet.set_cva_backend("triton")
            return None  # the torch runtime, with the Triton CVA inside

        factories["triton"] = triton_factory
    return factories


def fast_path_parity(backends, device: str) -> dict | None:
    """Per-step SQNR and final SSIM/PSNR of each fast path vs fp32 torch, on the tiny preset."""
    from .. import scenarios as pose_scenarios
    from ..export import ExportOptions, ShapeBucket, export_pipeline
    from ..export.parity import trajectory_parity
    from ..presets import build_pipeline
    from ..samples import sample

    pipe = build_pipeline("tiny", device=device)
    request = pose_scenarios.t2(*sample("person_red_front"), sample("person_red_walking")[1], tile_size=(64, 64),
                                seed=0)
    rows, lines = [], []
    for backend in backends:
        try:
            if backend == "onnxruntime":
                from ..export.runtime.onnxruntime_backend import OnnxRuntimeBackend

                folder = Path("outputs/onnx/tiny")
                export_pipeline(pipe, folder, ExportOptions(bucket=ShapeBucket(1, 64, 64, 2, 2)))
                runtime = OnnxRuntimeBackend.for_pipeline(pipe, folder)
            elif backend == "triton":
                from ..export.parity import CVABackendRuntime

                runtime = CVABackendRuntime(pipe, "triton")
            else:
                continue
            row = trajectory_parity(pipe, backend, runtime, request, steps=10)
        except Exception as exc:  # report, don't abort the benchmark
            row = {"backend": backend, "error": f"{type(exc).__name__}: {exc}"}
        rows.append(row)
        lines.append(json.dumps(row))
    return {"rows": rows, "text": "\n".join(lines)}
