"""Flag groups shared by several subcommands."""

from __future__ import annotations

import argparse

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def add_model_arguments(parser: argparse.ArgumentParser, default_preset: str = "tiny") -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", metavar="DIR", default=None,
                       help="pipeline folder (IMAGPosePipeline.save_pretrained / `imagpose convert` output); "
                            "overrides --preset")
    group.add_argument("--preset", default=default_preset, choices=["tiny", "mid", "sd15"],
                       help="architecture preset with deterministic RANDOM weights, used when --model is not given")
    group.add_argument("--weights-seed", type=int, default=0, help="seed of the random preset weights")
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    group.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="model precision")
    group.add_argument("--attention-backend", default="eager", help="CVA attention backend (eager, sdpa, ...)")


def add_sampling_arguments(parser: argparse.ArgumentParser, default_steps: int | None = None) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--steps", type=int, default=default_steps,
                       help="DDIM steps (default: the preset's, 20 as in the paper)")
    group.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale w")
    group.add_argument("--seed", type=int, default=0, help="initial-noise seed")
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")


def load_pipeline(args):
    from ..pipeline import IMAGPosePipeline
    from ..presets import build_pipeline

    dtype = DTYPES[args.dtype]
    if args.model:
        pipe = IMAGPosePipeline.from_pretrained(args.model, torch_dtype=dtype).to(args.device)
    else:
        pipe = build_pipeline(args.preset, seed=args.weights_seed, device=args.device, dtype=dtype)
    pipe.unet.set_cva_backend(args.attention_backend)
    return pipe


def parse_size(text: str) -> tuple[int, int]:
    """'256x176' -> (256, 176): height x width."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, e.g. 256x176, got {text!r}") from exc
    return height, width


def parse_grid(text: str) -> tuple[int, int]:
    """'2x3' -> (2, 3): rows x cols."""
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLS, e.g. 2x2, got {text!r}") from exc
    return rows, cols


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runtime backend")
    group.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "tensorrt"],
                       help="runtime for the networks (onnxruntime exports missing ONNX files first)")
    group.add_argument("--onnx-dir", default=None, help="ONNX folder for --backend onnxruntime "
                                                        "(default outputs/onnx/<preset or model name>)")
    group.add_argument("--engine-dir", default=None, help="TensorRT engine folder for --backend tensorrt")


def resolve_backend(pipe, args, grid=(2, 2)):
    """The runtime named by --backend for ``pipe`` (None for torch)."""
    if args.backend == "torch":
        return None
    from pathlib import Path

    from ..export import ExportOptions, ShapeBucket, export_pipeline
    from ..export.runtime import load_backend

    if args.backend == "onnxruntime":
        name = Path(args.model).name if args.model else args.preset
        onnx_dir = Path(args.onnx_dir or f"outputs/onnx/{name}")
        export_pipeline(pipe, onnx_dir, ExportOptions(bucket=ShapeBucket(1, 64, 64, *grid)))
        return load_backend("onnxruntime", pipe, onnx_dir)
    if not args.engine_dir:
        raise ValueError("--backend tensorrt needs --engine-dir (built with `imagpose export trt`).")
    return load_backend("tensorrt", pipe, args.engine_dir)
