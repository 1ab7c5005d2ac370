"""Run the same inputs through several runtimes and compare them with the fp32 PyTorch reference: a table
per component (max abs, SQNR dB) and end to end (final-image SSIM, PSNR), PASS/FAIL against the stated
tolerances (fp32: SQNR >= 60 dB, SSIM >= 0.999; fp16: PyTorch fp16's own error against fp32, measured in the
same run). ONNX files and TensorRT engines are exported and built into --work-dir first, and reused while they
match the model.

  imagpose parity --runtimes torch,onnxruntime
  imagpose parity --runtimes tensorrt --device cuda --export-dtype fp16"""

from __future__ import annotations

from pathlib import Path

from ..runtime import RUNTIMES
from .argument_types import parse_grid, parse_size
from .common import add_model_arguments

NAME = "parity"
HELP = "compare runtimes (torch, onnxruntime, tensorrt) against the fp32 torch reference"


def add_arguments(parser) -> None:
    parser.add_argument("--runtimes", "--backends", dest="runtimes", default="torch,onnxruntime",
                        help=f"comma-separated: {', '.join(RUNTIMES)} (--backends: its former name)")
    parser.add_argument("--work-dir", default=None,
                        help="folder for the exported ONNX files and TensorRT engines, reused while they match the "
                             "model (default outputs/runtimes/<preset or model folder name>)")
    parser.add_argument("--export-dtype", default="fp32", choices=["fp32", "fp16"],
                        help="precision of the exported graphs and engines; fp16 backends are held to PyTorch fp16's "
                             "own error against fp32 (SQNR >= torch fp16's - 6 dB)")
    parser.add_argument("--providers", default="CPUExecutionProvider",
                        help="comma-separated ONNX Runtime execution providers")
    parser.add_argument("--tile-size", type=parse_size, default=(64, 64), help="tile HEIGHTxWIDTH of the check")
    parser.add_argument("--grid", type=parse_grid, default=(2, 2), help="ROWSxCOLS grid")
    parser.add_argument("--steps", type=int, default=3, help="denoising steps of the end-to-end check")
    parser.add_argument("--json", default=None, help="also write the report as JSON here")
    add_model_arguments(parser)


def run(args) -> int:
    import copy

    import torch

    from .. import scenarios
    from ..errors import InvalidArgumentError
    from ..export import ShapeBucket
    from ..export.parity import CastRuntime, run_parity
    from ..export.runtime import prepare_runtime
    from ..io import write_json
    from ..samples import sample
    from .common import load_pipeline

    names = [b.strip() for b in args.runtimes.split(",") if b.strip()]
    unknown = [name for name in names if name not in RUNTIMES]
    if unknown or not names:
        problem = f"unknown runtime(s) {', '.join(unknown)}" if unknown else "no runtime"
        raise InvalidArgumentError(f"--runtimes {args.runtimes!r} names {problem}; choose from {', '.join(RUNTIMES)} "
                                   "(comma-separated).")
    pipe = load_pipeline(args)
    bucket = ShapeBucket(1, *args.tile_size, *args.grid)
    work_dir = Path(args.work_dir or Path("outputs/runtimes") / (Path(args.model).name if args.model else args.preset))
    backends = {name: prepare_runtime(name, pipe, work_dir, bucket, dtype=args.export_dtype,
                                      providers=args.providers.split(","))
                for name in names}
    low_precision = {}
    if args.export_dtype == "fp16":  # the yardstick: the same PyTorch model in fp16
        pipe16 = copy.deepcopy(pipe).to(dtype=torch.float16)
        low_precision = {"lowp_reference": CastRuntime(pipe16.torch_runtime(), torch.float16),
                         "lowp_backends": tuple(name for name in names if name != "torch")}
    image, pose = sample("person_red_front")
    requests = [scenarios.t2(image, pose, sample("person_red_walking")[1], tile_size=args.tile_size,
                             grid=args.grid, seed=0),
                scenarios.imagpose_star(image, pose, [sample(f"person_red_{n}")[1] for n in ("arms_up", "side")],
                                        tile_size=args.tile_size, grid=args.grid, seed=1)]
    report = run_parity(pipe, backends, bucket, requests, steps=args.steps, **low_precision)
    print(report.format())
    if args.json:
        write_json(args.json, report.to_dict())
        print(f"report: {args.json}")
    return 0 if report.passed else 1
