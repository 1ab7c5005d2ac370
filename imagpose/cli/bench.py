"""Benchmark IMAGPose against PIDM, CFLD, PoCoLD and PCDMs (re-implemented from their public code, random
weights): seconds per generated image per stage, exact FLOPs, TFLOP/s and MFU, under "as released" and
"common policy" settings, with a verdict on the paper's speed claims, an output-parity section for the
fast paths and the batching SDK's throughput. Writes report.md, results.json, results.csv and plots.

  imagpose bench --device cpu --quick          # reduced sizes, 2 steps per loop extrapolated: minutes
  imagpose bench --device cuda                 # the full-size suite on a GPU
  imagpose bench --quick --model DIR           # IMAGPose timed and parity-checked on a pipeline folder
  imagpose bench report outputs/bench/quick    # re-render a report from its results.json"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .argument_types import model_folder, parse_size

NAME = "bench"
HELP = "speed benchmark vs PIDM / CFLD / PoCoLD / PCDMs, with a report and claim verdicts"


def add_arguments(parser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N")
    parser.add_argument("--quick", action="store_true",
                        help="reduced sizes at half resolution, 2 timed steps per loop (extrapolated)")
    parser.add_argument("--methods", default=None, help="comma-separated subset of imagpose, imagpose_star, pidm, "
                                                        "cfld, pocold, pcdms (default: all)")
    parser.add_argument("--settings", default="as_released,common_policy",
                        help="comma-separated subset of as_released, common_policy")
    parser.add_argument("--fast-paths", "--backends", dest="fast_paths", default=None,
                        help="IMAGPose fast paths to time besides eager: onnxruntime, tensorrt, triton-cva (the fused "
                             "CVA kernels) (default: onnxruntime on CPU; onnxruntime,tensorrt,triton-cva on CUDA; "
                             "--backends: its former name)")
    parser.add_argument("--model", metavar="DIR", default=None, type=model_folder,
                        help="pipeline folder (IMAGPosePipeline.save_pretrained, `imagpose convert`, a trained model) "
                             "that the IMAGPose rows, the parity and SDK sections run, at its training tile size when "
                             "the folder records one (default: the random-weight presets; baselines stay random)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per scenario")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per scenario, median kept (default: 1 with --quick, else 3)")
    parser.add_argument("--no-parity", action="store_true", help="skip the fast-path output parity section")
    parser.add_argument("--no-sdk", action="store_true", help="skip the SDK throughput section")
    parser.add_argument("--out", default=None, help="report folder (default outputs/bench/<quick|full>)")
    parser.add_argument("--work-dir", default=None,
                        help="folder for the fast paths' ONNX exports and TensorRT engines, reused between runs "
                             "while they match the models (default: OUT/work)")
    sub = parser.add_subparsers(dest="bench_command", metavar="report", help="re-render a report")
    report = sub.add_parser("report", help="re-render report.md / plots from a results.json folder",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    report.add_argument("folder", help="folder holding results.json")
    quality = sub.add_parser(
        "quality", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="speed and quality of the fast-sampling options on held-out people (table + Pareto plot)",
        description="Every sampler, step count, guidance interval, DeepCache and INT8 setting generates the same "
                    "held-out people beside the default (DDIM 20, CFG every step): seconds per image, exact "
                    "full-size FLOPs, SSIM/PSNR against the default's output and the trainer's measures against "
                    "the ground truth. Writes report.md, results.json, results.csv and speed_quality.png.")
    quality.add_argument("--model", default=None, metavar="DIR", type=model_folder,
                         help="a trained pipeline folder (default: the shipped trained model)")
    quality.add_argument("--data", default=None, metavar="DIR",
                         help="dataset folder with test.json (default: the model's held-out people, generated "
                              "into --work-dir from the seed its training.json records)")
    quality.add_argument("--sweep", default="full", choices=["full", "quick"], help="which settings to run")
    quality.add_argument("--student", default=None, metavar="DIR", type=model_folder,
                         help="a few-step student distilled from --model (`imagpose train distill`): its rows at "
                              "4, 2 and 1 steps beside the other settings (default: without --model, the shipped "
                              "student of the shipped model)")
    quality.add_argument("--items", type=int, default=24, help="held-out items scored per setting")
    quality.add_argument("--batch-size", type=int, default=8, help="requests per pipeline call")
    quality.add_argument("--out", default="outputs/bench/quality", help="report folder")
    quality.add_argument("--work-dir", default=None,
                         help="held-out data and ONNX/INT8 exports, reused between runs (default: OUT/work)")
    quality.add_argument("--no-progress", action="store_true", help="hide progress bars")
    costs = sub.add_parser(
        "autoencoders", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="FLOPs of SD's VAE, TAESD and the tiny preset's autoencoder at full size (meta device)",
        description="Exact FLOPs of encoding and decoding one image with each autoencoder class (the pipeline's "
                    "own calls, counted on the meta device: no weights needed) and their parameter counts.")
    costs.add_argument("--size", type=parse_size, default=(512, 512), metavar="HxW", help="image size in pixels")
    costs.add_argument("--out", default=None, metavar="DIR", help="also write autoencoders.json and .md here")


def run(args) -> int:
    from ..bench.report import write_report

    if args.bench_command == "quality":
        return run_quality(args)
    if args.bench_command == "autoencoders":
        return run_autoencoder_costs(args)
    if args.bench_command == "report":
        data = json.loads((Path(args.folder) / "results.json").read_text())
        suite = {key: data[key] for key in ("environment", "results", "imagpose_weights") if key in data}
        paths = write_report(suite, args.folder, data.get("parity"), data.get("sdk_throughput"))
        print(f"report: {paths['md']}")
        return 0
    from ..bench.scenarios import FAST_PATHS, METHODS, SETTINGS, build_suite, check_choices
    from ..errors import InvalidArgumentError
    from ..io import OutputFolder
    from ..timing import Stopwatch
    from .common import check_device

    methods = check_choices("method", _names(args.methods) if args.methods is not None else METHODS, METHODS)
    settings = check_choices("setting", _names(args.settings), SETTINGS)
    device = str(check_device(args.device))
    cuda = device.startswith("cuda")
    default_fast_paths = ("onnxruntime", "tensorrt", "triton-cva") if cuda else ("onnxruntime",)
    backends = check_choices("fast path", _names(args.fast_paths) if args.fast_paths is not None
                             else default_fast_paths, FAST_PATHS)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if args.warmup < 0 or repeats < 1:
        raise InvalidArgumentError(f"--warmup must be >= 0 and --repeats >= 1, got {args.warmup} and {repeats}.")

    from ..bench.fast_paths import backend_factories, fast_path_parity
    from ..bench.harness import run_suite
    from ..bench.imagpose_method import describe_weights
    from ..bench.sdk_throughput import measure_sdk_throughput
    from ..pipeline import IMAGPosePipeline

    if args.model:  # every file is checked now: a bad folder is one line, not an error in each IMAGPose row
        IMAGPosePipeline.from_pretrained(args.model)

    out = Path(args.out or f"outputs/bench/{'quick' if args.quick else 'full'}")
    work_dir = Path(args.work_dir) if args.work_dir else out / "work"
    scenarios = build_suite(methods, settings, backends, quick=args.quick, model=args.model)
    fast_paths = [b for b in backends if b != "eager"]
    with OutputFolder(out) as folder, Stopwatch() as watch:  # an unwritable --out fails now, not after the run
        suite = run_suite(scenarios, device, args.warmup, repeats,
                          backend_factories=backend_factories(fast_paths, work_dir))
        suite["imagpose_weights"] = describe_weights(args.model)
        parity = None if args.no_parity else fast_path_parity(fast_paths, device, work_dir / "parity", args.model)
        sdk = None
        if not args.no_sdk:  # quick: the reduced model, 2 steps per request, one timed run of each
            sdk = (measure_sdk_throughput(device, "reduced", steps=2, repeats=1, model_dir=args.model) if args.quick
                   else measure_sdk_throughput(device, "full", repeats=repeats, model_dir=args.model))
        paths = write_report(suite, folder, parity, sdk)
    print(f"bench: {len(scenarios)} scenarios in {watch.seconds:.0f} s; report {paths['md']}")
    for name, path in paths.items():
        if name != "md":
            print(f"  {name}: {path}")
    return 0


def run_autoencoder_costs(args) -> int:
    from ..bench.autoencoder_cost import as_json, autoencoder_costs, format_costs
    from ..io import OutputFolder

    size = tuple(args.size)
    costs = autoencoder_costs(size)
    table = format_costs(costs, size)
    if args.out:
        with OutputFolder(args.out) as folder:
            folder.write_json("autoencoders.json", as_json(costs, size))
            folder.path("autoencoders.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0


def run_quality(args) -> int:
    from ..bench.quality import run_quality_bench, sweep
    from ..bench.quality_report import write_quality_report
    from ..errors import InvalidArgumentError
    from ..io import OutputFolder
    from ..pretrained import SHIPPED_STUDENT, shipped_model_dir, shown_name, training_record
    from ..timing import Stopwatch

    if args.items < 1 or args.batch_size < 1:
        raise InvalidArgumentError(f"--items and --batch-size must be >= 1, got {args.items} and {args.batch_size}.")
    model = Path(args.model) if args.model else shipped_model_dir()
    student = args.student or (None if args.model else shipped_model_dir(SHIPPED_STUDENT))
    out = Path(args.out)
    work_dir = Path(args.work_dir) if args.work_dir else out / "work"
    data = Path(args.data) if args.data else held_out_people(model, work_dir / "heldout", training_record)
    with OutputFolder(out) as folder, Stopwatch() as watch:
        results = run_quality_bench(model, data, sweep(args.sweep, student), work_dir, max_items=args.items,
                                    batch_size=args.batch_size, progress=not args.no_progress)
        results["model"] = shown_name(model)  # reports travel: shipped models by name, not this install's path
        for row in results["results"]:
            if row["setting"]["model"]:
                row["setting"]["model"] = shown_name(row["setting"]["model"])
        if not args.data:
            held_out = training_record(model)["held_out"]
            results["data"] = f"heldout ({held_out['identities']} identities, seed {held_out['seed']})"
        names = write_quality_report(results, folder)
    print(f"bench quality: {len(results['results'])} settings on {results['items']} items in {watch.seconds:.0f} s")
    print((out / "report.md").read_text().split("\n## Best")[0].split("\n\n", 2)[-1])
    for name in names:
        print(f"  {out / name}")
    return 0


def held_out_people(model: Path, folder: Path, training_record) -> Path:
    """The model's held-out people (training.json: seed and count never used in training), made once."""
    from ..errors import InvalidArgumentError
    from ..synthetic.dataset import make_dataset

    record = training_record(model)
    if record is None or "held_out" not in record:
        raise InvalidArgumentError(f"{model} records no held-out people (no training.json with 'held_out'); pass "
                                   "--data DIR (a dataset from `imagpose train make-data`).")
    if not (folder / "dataset.json").is_file():
        make_dataset(folder, record["held_out"]["identities"], seed=record["held_out"]["seed"],
                     size=tuple(record["tile_size"]), test_fraction=0.999)
    return folder


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]
