"""Run the same inputs through several backends and compare them with the fp32 PyTorch reference: a table
per component (max abs, SQNR dB) and end to end (final-image SSIM, PSNR), PASS/FAIL against the stated
tolerances (fp32: SQNR >= 60 dB, SSIM >= 0.999). Missing ONNX files are exported first (cached)."""

from __future__ import annotations

from pathlib import Path

from .common import add_model_arguments, parse_grid, parse_size

NAME = "parity"
HELP = "compare backends (torch, onnxruntime, tensorrt) against the fp32 torch reference"


def add_arguments(parser) -> None:
    parser.add_argument("--backends", default="torch,onnxruntime",
                        help="comma-separated: torch, onnxruntime, tensorrt")
    parser.add_argument("--onnx-dir", default=None, help="ONNX folder (default outputs/onnx/<preset>; exported if "
                                                         "missing)")
    parser.add_argument("--engine-dir", default=None, help="TensorRT engine folder (for --backends tensorrt)")
    parser.add_argument("--providers", default="CPUExecutionProvider",
                        help="comma-separated ONNX Runtime execution providers")
    parser.add_argument("--tile-size", type=parse_size, default=(64, 64), help="tile HEIGHTxWIDTH of the check")
    parser.add_argument("--grid", type=parse_grid, default=(2, 2), help="ROWSxCOLS grid")
    parser.add_argument("--steps", type=int, default=3, help="denoising steps of the end-to-end check")
    parser.add_argument("--json", default=None, help="also write the report as JSON here")
    add_model_arguments(parser)


def run(args) -> int:
    from .. import scenarios
    from ..export import ExportOptions, ShapeBucket, export_pipeline
    from ..export.parity import run_parity
    from ..export.runtime import load_backend
    from ..io import write_json
    from ..samples import sample
    from .common import load_pipeline

    pipe = load_pipeline(args)
    bucket = ShapeBucket(1, *args.tile_size, *args.grid)
    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    onnx_dir = Path(args.onnx_dir or f"outputs/onnx/{Path(args.model).name if args.model else args.preset}")
    backends = {}
    for name in names:
        if name == "torch":
            backends[name] = pipe.torch_runtime()
        elif name == "onnxruntime":
            export_pipeline(pipe, onnx_dir, ExportOptions(bucket=bucket))
            backends[name] = load_backend(name, pipe, onnx_dir, providers=args.providers.split(","))
        else:
            if not args.engine_dir:
                raise ValueError("--backends tensorrt needs --engine-dir (built with `imagpose export trt`).")
            backends[name] = load_backend(name, pipe, args.engine_dir)
    image, pose = sample("person_red_front")
    requests = [scenarios.t2(image, pose, sample("person_red_walking")[1], tile_size=args.tile_size,
                             grid=args.grid, seed=0),
                scenarios.imagpose_star(image, pose, [sample(f"person_red_{n}")[1] for n in ("arms_up", "side")],
                                        tile_size=args.tile_size, grid=args.grid, seed=1)]
    report = run_parity(pipe, backends, bucket, requests, steps=args.steps)
    print(report.format())
    if args.json:
        write_json(args.json, report.to_dict())
        print(f"report: {args.json}")
    return 0 if report.passed else 1
