"""``imagpose export quantize``: the UNet quantized to INT8 or FP8 with NVIDIA Model Optimizer, in an export folder.

  imagpose export quantize --precision int8 --calib-requests 4 --out int8/          the shipped trained model
  imagpose export quantize --preset sd15 --precision fp8 --tile-size 512x512 --out fp8/
  imagpose export quantize --precision int8 --out int8/ --measure 4                 + SQNR, SSIM, speed vs fp32

The folder holds every component (the UNet quantized, the rest fp32) with manifest.json, as `export onnx` writes
it: `--runtime onnxruntime` and `export trt` read it. Calibration runs the fp32 pipeline on generated people.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..seeds import HELD_OUT_PEOPLE_SEED
from .argument_types import integer, parse_grid, parse_size
from .common import add_model_arguments

HELP = "quantize the UNet to INT8/FP8 (Model Optimizer) into an export folder"


def add_parser(subparsers, formatter_class=argparse.ArgumentDefaultsHelpFormatter):
    parser = subparsers.add_parser("quantize", help=HELP, description=__doc__, formatter_class=formatter_class)
    add_model_arguments(parser, default_preset=None)
    parser.add_argument("--out", required=True, help="export folder (manifest.json + <component>.onnx/.json)")
    parser.add_argument("--precision", default="int8", choices=["int8", "fp8"],
                        help="int8 (ONNX Runtime CPU and TensorRT) or fp8 E4M3 (TensorRT on compute capability 8.9+)")
    parser.add_argument("--algorithm", default="max", choices=["max", "smoothquant"],
                        help="calibration: maxima, or SmoothQuant (int8; alpha 0.8 as the TensorRT diffusion demo)")
    parser.add_argument("--calib-requests", type=integer(1), default=4, metavar="N",
                        help="generated people whose every denoising step calibrates the quantizers")
    parser.add_argument("--steps", type=integer(1), default=20, help="denoising steps of each calibration call")
    parser.add_argument("--tile-size", type=parse_size, default=None,
                        help="tile HEIGHTxWIDTH of calibration and export (default: the model's training tile "
                             "size from training.json, else 512x512)")
    parser.add_argument("--grid", type=parse_grid, default=(2, 2), help="ROWSxCOLS grid baked into the UNet")
    parser.add_argument("--static", action="store_true", help="static shapes instead of dynamic axes")
    parser.add_argument("--measure", type=integer(1), default=None, metavar="N",
                        help="then measure on N held-out people against fp32 torch (per-step SQNR, final SSIM, "
                             "UNet call time fp32 vs quantized ONNX Runtime); writes quantization.json into --out")
    parser.add_argument("--force", action="store_true", help="re-quantize even when the folder matches")
    parser.set_defaults(export_command="quantize", handler=run)  # the top-level CLI calls args.handler
    return parser


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from ..errors import InvalidArgumentError
    from ..export.quantize import QuantizeOptions, export_quantized_unet, generated_requests, import_modelopt
    from ..io import refuse_non_folder, write_json
    from ..pretrained import shipped_model_dir, trained_tile_size
    from .common import load_pipeline

    options = QuantizeOptions(args.precision, args.algorithm, args.steps)
    if args.dtype != "fp32":
        raise InvalidArgumentError(f"--dtype {args.dtype}: quantization calibrates against the fp32 model; leave "
                                   "--dtype at fp32 (--precision sets the quantized graph's precision).")
    refuse_non_folder(args.out)
    import_modelopt()  # the install hint before a model loads
    if args.model is None and args.preset is None:
        args.model = str(shipped_model_dir())
    tile = args.tile_size or (trained_tile_size(args.model) if args.model else None) or (512, 512)
    pipe = load_pipeline(args)
    pipe.check_tile_size(tile, args.grid)
    requests = generated_requests(args.calib_requests, tile, args.grid)
    out = export_quantized_unet(pipe, args.out, requests, args.precision, options, dynamic=not args.static,
                                force=args.force)
    sidecar = json.loads((Path(out) / "unet.json").read_text())
    size = (Path(out) / "unet.onnx").stat().st_size / 2**20
    print(f"unet {args.precision}: {out / 'unet.onnx'} ({size:.1f} MiB), calibrated on {args.calib_requests} "
          f"request(s) x {args.steps} steps; nodes {sidecar['node_counts']}")
    if args.measure:
        results = measure(pipe, out, tile, args)
        write_json(Path(out) / "quantization.json", results)
        print(json.dumps(results, indent=1))
    return 0


def measure(pipe, out: Path, tile, args) -> dict:
    from ..errors import IMAGPoseError
    from ..export import ShapeBucket
    from ..export.quantize import generated_requests
    from ..export.quantize_parity import quantization_parity, unet_speed
    from ..export.runtime import prepare_runtime
    from ..export.runtime.onnxruntime_backend import OnnxRuntimeBackend

    requests = generated_requests(args.measure, tile, args.grid, seed=HELD_OUT_PEOPLE_SEED)
    try:
        quantized = OnnxRuntimeBackend.for_pipeline(pipe, out)
    except IMAGPoseError as exc:
        return {"precision": args.precision, "error": f"ONNX Runtime (CPU) cannot run it here: {exc}"}
    bucket = ShapeBucket(1, *pipe.request_layout(requests[0]).padded_tile, *args.grid)
    fp32 = prepare_runtime("onnxruntime", pipe, Path(out) / "fp32-reference", bucket)
    results = {"precision": args.precision, "algorithm": args.algorithm, "tile_size": list(tile),
               "held_out_seed": HELD_OUT_PEOPLE_SEED, **quantization_parity(pipe, quantized, requests, args.steps)}
    speed = unet_speed(pipe, {"onnxruntime fp32": fp32, f"onnxruntime {args.precision}": quantized}, requests[0])
    results["unet_call_median_s"] = speed
    results["speedup_vs_fp32_onnxruntime"] = round(speed["onnxruntime fp32"] / speed[f"onnxruntime {args.precision}"],
                                                   3)
    return results
