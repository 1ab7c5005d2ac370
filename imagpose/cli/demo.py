"""Run every user scenario of the paper (T1, T2, T3, IMAGPose*, mixed, a 2x3 grid, a 128x128 tile) on the
sample people shipped with imagpose, and write the target tiles, canvases and a JSON summary."""

from __future__ import annotations

from pathlib import Path

from .common import (
    add_model_arguments,
    add_output_argument,
    add_runtime_arguments,
    add_sampling_arguments,
    load_pipeline,
    resolve_runtime,
    sampling_from_args,
)

NAME = "demo"
HELP = "run all scenarios on the shipped sample inputs (the shipped trained tiny model by default)"


def add_arguments(parser) -> None:
    add_output_argument(parser, "outputs/demo")
    add_model_arguments(parser, default_preset=None)
    add_sampling_arguments(parser)
    add_runtime_arguments(parser)


def run(args) -> int:
    from ..demo import run_demo
    from ..io import OutputFolder
    from ..pretrained import SHIPPED_MODEL, shipped_model_dir, trained_tile_size

    shipped = args.model is None and args.preset is None
    if shipped:
        args.model = str(shipped_model_dir())
    with OutputFolder(args.out) as out:  # checked before the model loads; written when the run succeeds
        # the sampling flags together (an interval that guides no step, ...) before minutes of loading and exporting
        sampling_from_args(args)
        pipe = load_pipeline(args)
        sampling = sampling_from_args(args, pipe.sampling_config())  # the model's defaults with the flags given
        pipe.set_runtime(resolve_runtime(pipe, args))
        label = (f"{SHIPPED_MODEL} (shipped, trained on generated people)" if shipped
                 else args.model or f"{args.preset} (random weights, seed {args.weights_seed})")
        tile = trained_tile_size(args.model) if args.model else None
        print(f"imagpose demo: model {label}, {sampling.num_inference_steps} steps, guidance "
              f"{sampling.guidance_scale}, device {args.device}, runtime {args.runtime}")
        summary = run_demo(pipe, out, sampling, seed=args.seed, model_label=label, progress=not args.no_progress,
                           runtime_label=args.runtime, tile_height=tile[0] if tile else None)
    for item in summary["scenarios"]:
        grid = "x".join(map(str, item["grid"]))
        tile = "x".join(map(str, item["tile_size"]))
        print(f"  {item['name']:<14} grid {grid}  tile {tile}  targets {len(item['targets'])}  -> "
              f"{Path(args.out) / item['name']}")
    for name, why in summary["skipped"].items():
        print(f"  {name:<14} skipped: {why}")
    print(f"{len(summary['scenarios'])} scenarios in {summary['seconds_total']:.1f} s; "
          f"summary: {Path(args.out) / 'summary.json'}; all of them in one image: {Path(args.out) / 'overview.png'}")
    if summary["note"]:
        print(f"note: {summary['note']}")
    return 0
