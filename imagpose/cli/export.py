"""Export to ONNX, check ONNX files for TensorRT, and build TensorRT engines.

  imagpose export onnx --preset tiny --out onnx/                    every component, fp32, opset 17, dynamic
  imagpose export onnx --model DIR --dtype fp16 --out onnx_fp16/
  imagpose export check-trt onnx/unet.onnx --trt-version 10.1       exit 1 on a blocker
  imagpose export quantize --model DIR --precision int8 --out int8/    INT8 Q/DQ UNet (Model Optimizer)
  imagpose export trt --onnx onnx_fp16/ --out engines/ --bucket 1,512x512,2x2 --bucket 2,512x512,2x2
  imagpose export triton --model DIR --runtime onnxruntime --out repo/     Triton model repository (docs/serving.md)
  imagpose export triton --model DIR --runtime tensorrt --engines engines/ --out repo/
  imagpose export triton --check repo/                               validate offline, exit 1 on a problem"""

from __future__ import annotations

import argparse
import logging

from . import export_quantize
from .argument_types import integer, number, parse_grid, parse_size
from .common import add_model_arguments

NAME = "export"
HELP = "ONNX export, TensorRT compatibility check, TensorRT engine builds, Triton model repositories"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="export_command", required=True, metavar="WHAT",
                                help="onnx | check-trt | trt | triton | quantize")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    onnx = sub.add_parser("onnx", help="export components to ONNX (cached, atomic)", formatter_class=fmt)
    add_model_arguments(onnx)
    onnx.add_argument("--out", required=True, help="output folder (manifest.json + <component>.onnx/.json)")
    onnx.add_argument("--component", action="append", default=None,
                      help="component to export (repeat); default all: unet, vae_encoder, vae_decoder, "
                           "image_encoder, pose_guider, flc_tokenizer")
    onnx.add_argument("--export-dtype", default="fp32", choices=["fp32", "fp16"], help="precision of the graphs")
    onnx.add_argument("--opset", type=int, default=17,
                      help="17: TorchScript exporter (TensorRT's GroupNorm form); 18+: dynamo exporter")
    onnx.add_argument("--static", action="store_true", help="static shapes (the sample bucket) instead of dynamic")
    onnx.add_argument("--tile-size", type=parse_size, default=(512, 512), help="sample tile HEIGHTxWIDTH")
    onnx.add_argument("--grid", type=parse_grid, default=(2, 2), help="ROWSxCOLS grid baked into the UNet")
    onnx.add_argument("--batch", type=integer(1), default=1, help="sample number of requests (UNet batch is 2x)")
    onnx.add_argument("--no-passes", action="store_true", help="skip graphsurgeon cleanup and constant folding")
    onnx.add_argument("--deepcache-branch", type=int, action="append", default=None, metavar="K",
                      help="also export the DeepCache UNet pair of skip branch K (repeat for several; what "
                           "pipe(..., deepcache_branch=K) runs on ONNX Runtime and TensorRT)")
    onnx.add_argument("--force", action="store_true", help="re-export even when the cache matches")

    check = sub.add_parser("check-trt", help="report what TensorRT's ONNX parser would reject (no TensorRT needed)",
                           formatter_class=fmt)
    check.add_argument("onnx_files", nargs="+", metavar="MODEL.onnx", help="ONNX file(s) to check")
    check.add_argument("--trt-version", default="10.1", choices=["10.1", "8.6"], help="TensorRT support table")
    check.add_argument("--show-warnings", action="store_true", help="list warnings as well as blockers")

    trt = sub.add_parser("trt", help="build TensorRT engines from an ONNX folder (needs tensorrt + CUDA)",
                         formatter_class=fmt)
    trt.add_argument("--onnx", required=True, help="folder written by `imagpose export onnx`")
    trt.add_argument("--out", required=True,
                     help="engine folder (engines.json + <component>.<bucket>.plan/.json); an engine already there "
                          "is reused when built from the same ONNX files, flags and shapes by this TensorRT and GPU")
    trt.add_argument("--bucket", action="append", default=None,
                     help="BATCH,TILE_HxTILE_W,ROWSxCOLS static shape bucket (repeat); default 1,512x512,2x2")
    trt.add_argument("--dynamic", action="store_true", help="one engine per component spanning the buckets")
    trt.add_argument("--component", action="append", default=None, help="component to build (repeat); default all")
    trt.add_argument("--opt-level", type=int, choices=range(6), default=3, help="builder optimisation level (0-5)")
    trt.add_argument("--workspace-gib", type=number(0, low_inclusive=False), default=8.0,
                     help="builder workspace limit")
    trt.add_argument("--tf32", action="store_true", help="allow TF32 math in fp32 layers (faster, less exact)")
    trt.add_argument("--timing-cache", default=None, help="timing cache file (read and updated)")
    trt.add_argument("--dry-run", action="store_true", help="print the plans and trtexec commands, build nothing")

    triton = sub.add_parser("triton", help="write a Triton Inference Server model repository, or --check one",
                            formatter_class=fmt)
    add_model_arguments(triton)
    triton.add_argument("--runtime", choices=["tensorrt", "onnxruntime", "python"], default=None,
                        help="network models: tensorrt_plan (needs --engines), onnxruntime_onnx, or python (ONNX "
                             "Runtime in the Python backend, for servers without the onnxruntime backend)")
    triton.add_argument("--out", default=None, help="repository folder (written beside what is there, atomically)")
    triton.add_argument("--check", metavar="REPO", default=None,
                        help="validate REPO offline (Triton's config schema, shapes against the ONNX files or the "
                             "engines' build records) instead of writing one; exit 1 on a problem")
    triton.add_argument("--onnx", metavar="DIR", default=None,
                        help="an `imagpose export onnx` folder of this model to serve (default: export now)")
    triton.add_argument("--engines", metavar="DIR", default=None,
                        help="an `imagpose export trt` folder (one engine per network) for --runtime tensorrt")
    triton.add_argument("--export-dtype", default="fp32", choices=["fp32", "fp16"],
                        help="precision of the graphs exported now")
    triton.add_argument("--opset", type=int, default=17, help="ONNX opset of the graphs exported now")
    triton.add_argument("--static", action="store_true", help="export static shapes (the sample bucket) only")
    triton.add_argument("--tile-size", type=parse_size, default=(512, 512), help="sample tile HEIGHTxWIDTH")
    triton.add_argument("--grid", type=parse_grid, default=(2, 2), help="ROWSxCOLS grid baked into the UNet")
    triton.add_argument("--max-batch", type=integer(1), default=8,
                        help="requests the orchestrator's dynamic batcher runs as one pipeline call")
    triton.add_argument("--queue-delay-ms", type=number(0), default=50.0, help="how long the batcher waits for more")
    triton.add_argument("--instances", type=integer(1), default=1, help="orchestrator instances")
    triton.add_argument("--network-instances", type=integer(1), default=1, help="instances of each network model")
    triton.add_argument("--instance-kind", choices=["gpu", "cpu"], default=None,
                        help="where the networks run (default: gpu for tensorrt, cpu otherwise)")
    export_quantize.add_parser(sub, fmt)


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.export_command == "onnx":
        return _onnx(args)
    if args.export_command == "check-trt":
        return _check(args)
    if args.export_command == "triton":
        return _triton(args)
    return _trt(args)


def _onnx(args) -> int:
    from ..errors import InvalidArgumentError
    from ..export import COMPONENTS, ExportOptions, ShapeBucket, export_pipeline
    from ..io import refuse_non_folder
    from .common import load_pipeline

    refuse_non_folder(args.out)  # before the model loads
    pipe = load_pipeline(args)
    options = ExportOptions(dtype=args.export_dtype, opset=args.opset, dynamic=not args.static,
                            bucket=ShapeBucket(args.batch, *args.tile_size, *args.grid),
                            passes=() if args.no_passes else ("cleanup_toposort", "fold_constants"),
                            deepcache_branches=tuple(args.deepcache_branch or ()))
    components = tuple(args.component) if args.component else COMPONENTS
    unknown = sorted(set(components) - set(COMPONENTS))
    if unknown:
        raise InvalidArgumentError(f"Unknown component(s) {unknown}; choose from {', '.join(COMPONENTS)}.")
    results = export_pipeline(pipe, args.out, options, components, force=args.force)
    for r in results:
        data = f" + {r.data_path.name}" if r.data_path else ""
        print(f"{r.component:<14} {'reused' if r.reused else 'exported':<9} {r.size_bytes / 2**20:9.1f} MiB  "
              f"{r.path}{data}  nodes {r.node_counts}")
    return 0


def _check(args) -> int:
    from ..export.trt_check import check_onnx_for_trt, has_blockers

    failed = False
    for path in args.onnx_files:
        findings = check_onnx_for_trt(path, args.trt_version)
        blockers = [f for f in findings if f.severity == "blocker"]
        warnings = [f for f in findings if f.severity == "warning"]
        print(f"{path}: {len(blockers)} blocker(s), {len(warnings)} warning(s) for TensorRT {args.trt_version}")
        for finding in blockers + (warnings if args.show_warnings else []):
            print("  " + finding.format())
        failed |= has_blockers(findings)
    print("check-trt: " + ("FAIL (blockers found)" if failed else "OK"))
    return 1 if failed else 0


def _trt(args) -> int:
    from ..export import COMPONENTS, ShapeBucket
    from ..export.trt_build import BuildOptions, build_engines

    buckets = tuple(ShapeBucket.parse(b) for b in (args.bucket or ["1,512x512,2x2"]))
    options = BuildOptions(buckets=buckets, dynamic=args.dynamic, optimization_level=args.opt_level,
                           workspace_gib=args.workspace_gib, tf32=args.tf32, timing_cache=args.timing_cache,
                           components=tuple(args.component) if args.component else COMPONENTS)
    plans = build_engines(args.onnx, args.out, options, dry_run=args.dry_run)
    for plan in plans:
        status = "planned" if args.dry_run else ("reused" if plan.reused else "built")
        print(f"{plan.engine_path.name:<36} {status}\n  {plan.trtexec_command()}")
    return 0


def _triton(args) -> int:
    from ..errors import InvalidArgumentError
    from ..export import ExportOptions, ShapeBucket
    from ..serving.triton.repository import RepositoryOptions, write_repository
    from ..serving.triton.validate import validate_repository
    from .common import load_pipeline

    if args.check:
        problems = validate_repository(args.check)
        for problem in problems:
            print("  " + problem)
        print(f"check {args.check}: " + (f"FAIL ({len(problems)} problem(s))" if problems else "OK"))
        return 1 if problems else 0
    if not args.runtime or not args.out:
        raise InvalidArgumentError("imagpose export triton needs --runtime and --out to write a repository (or "
                                   "--check REPO to validate one).")
    options = RepositoryOptions(args.runtime, max_batch_size=args.max_batch, queue_delay_ms=args.queue_delay_ms,
                                instances=args.instances, network_instances=args.network_instances,
                                instance_kind=args.instance_kind)
    export_options = ExportOptions(dtype=args.export_dtype, opset=args.opset, dynamic=not args.static,
                                   bucket=ShapeBucket(1, *args.tile_size, *args.grid))
    pipe = load_pipeline(args)
    repo = write_repository(pipe, args.out, options, onnx_dir=args.onnx, export_options=export_options,
                            engines_dir=args.engines)
    print(f"{repo}: Triton model repository ({args.runtime}), validated. Serve it with\n"
          f"  docker run --rm -p8000:8000 -p8001:8001 -p8002:8002 -v {repo.resolve()}:/models "
          "nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models")
    return 0
