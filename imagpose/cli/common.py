"""Flag groups shared by several subcommands, and the checks that refuse bad values before any model is built."""

from __future__ import annotations

import argparse

import torch

from ..errors import DeviceError, InvalidArgumentError
from ..pretrained import SHIPPED_MODELS
from ..runtime import RUNTIMES
from ..samplers import SAMPLERS
from ..sampling_config import SamplingConfig, merged_settings
from .argument_types import model_folder, parse_deepcache, parse_guidance_interval, positive_gib, sampling_setting, seed

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def add_output_argument(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--out", default=default,
                        help="output folder, created if missing; outputs are added beside its files (replacing only "
                             "earlier outputs of the same names) once the run succeeds")


def add_model_arguments(parser: argparse.ArgumentParser, default_preset: str | None = "tiny") -> None:
    """``default_preset=None``: the command has its own default model (demo: the shipped trained one); a preset
    is used only when named."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", metavar="DIR", default=None, type=model_folder,
                       help="pipeline folder (IMAGPosePipeline.save_pretrained / `imagpose convert` output) or the "
                            f"name of a shipped model ({', '.join(SHIPPED_MODELS)}); overrides --preset")
    group.add_argument("--preset", default=default_preset, choices=["tiny", "mid", "sd15"],
                       help="architecture preset with deterministic RANDOM weights, used when --model is not given"
                            + ("" if default_preset else " (default: the shipped trained model)"))
    group.add_argument("--weights-seed", type=seed, default=0, help="seed of the random preset weights")
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda or cuda:1")
    group.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="model precision")
    group.add_argument("--attention-backend", default="eager",
                       help="CVA attention backend: eager, sdpa, triton (needs triton) or xformers (needs xformers)")
    group.add_argument("--max-memory-gib", type=positive_gib, default=None, metavar="GIB",
                       help="refuse requests whose estimated peak memory exceeds this many GiB (default: "
                            "$IMAGPOSE_MAX_MEMORY_GIB, else the weights + 80%% of the free memory)")


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a :class:`~imagpose.sampling_config.SamplingConfig` (:func:`sampling_from_args`); a flag left
    out keeps the model's default (the paper's; a distilled student's own few-step sampling)."""
    defaults = SamplingConfig()
    group = parser.add_argument_group("sampling (left out: the model's defaults; the paper's, or a distilled "
                                      "student's own)")
    group.add_argument("--steps", type=sampling_setting("num_inference_steps", int), default=None,
                       help=f"sampling steps (paper: {defaults.num_inference_steps}; a distilled student: 1-8)")
    group.add_argument("--guidance", type=sampling_setting("guidance_scale", float), default=None,
                       help=f"classifier-free guidance scale w (>= 0; <= 1 turns guidance off; paper: "
                            f"{defaults.guidance_scale})")
    group.add_argument("--guidance-interval", type=parse_guidance_interval, default=None, metavar="START:STOP",
                       help="apply guidance only on the steps i with int(START*N) <= i < int(STOP*N), fractions "
                            "of the N steps (0 = the first, noisiest), e.g. 0.2:0.8; the other steps run the "
                            "conditional branch alone (half the UNet rows). Default: every step")
    group.add_argument("--deepcache", type=parse_deepcache, default=None, metavar="INTERVAL[:BRANCH]",
                       help="DeepCache feature reuse: the whole UNet every INTERVAL steps, only the shallow layers "
                            "around skip branch BRANCH (default 0, the shallowest) on the steps between")
    group.add_argument("--eta", type=sampling_setting("eta", float), default=None,
                       help=f"DDIM eta in [0, 1] (0 = deterministic DDIM, as the official inference), or TCD's "
                            f"gamma (0 = deterministic); default {defaults.eta}")
    group.add_argument("--sampler", default=None, choices=SAMPLERS,
                       help=f"ddim (official), a diffusers multistep solver on the same schedule (fewer steps) or "
                            f"lcm / tcd (a distilled student's); paper: {defaults.sampler}")
    group.add_argument("--seed", type=seed, default=0, help="initial-noise seed")
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")


def sampling_changes(args) -> dict:
    """The :class:`~imagpose.sampling_config.SamplingConfig` fields the sampling flags give (left-out flags are
    absent), in the form of its ``to_dict`` (what a server completes with its model's defaults)."""
    given = {"num_inference_steps": args.steps, "guidance_scale": args.guidance, "sampler": args.sampler,
             "eta": args.eta, "guidance_interval": args.guidance_interval, "deepcache": args.deepcache}
    changes = SamplingConfig().replace(**{k: v for k, v in given.items() if v is not None}).to_dict()
    return {name: changes[name] for name, value in given.items() if value is not None}


def sampling_from_args(args, defaults: SamplingConfig | None = None) -> SamplingConfig:
    """``defaults`` (a pipeline's ``sampling_config()``; the paper's when None) with the sampling flags given."""
    return merged_settings(defaults or SamplingConfig(), sampling_changes(args))


def load_pipeline(args):
    from ..loading import load_pipeline as load
    from ..models.attention import get_cva_backend

    check_device(args.device)
    get_cva_backend(args.attention_backend)  # an unknown or uninstalled backend fails before the model is built
    pipe = load(args.model, preset=args.preset, weights_seed=args.weights_seed, device=args.device,
                dtype=DTYPES[args.dtype])
    pipe.unet.set_cva_backend(args.attention_backend)
    if args.max_memory_gib is not None:
        pipe.set_memory_limit(int(args.max_memory_gib * 2**30))
    return pipe


def available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def check_device(name: str) -> torch.device:
    """The torch device ``--device name``, or :class:`DeviceError` naming the devices available here."""
    try:
        device = torch.device(name)
    except RuntimeError:
        problem = "is not a torch device name"
    else:
        if device.type == "cpu" and device.index in (None, 0):
            return device
        if device.type == "cuda" and torch.cuda.is_available():
            if device.index is None or device.index < torch.cuda.device_count():
                return device
            problem = f"names a GPU this machine does not have ({torch.cuda.device_count()} visible)"
        elif device.type == "cuda":
            build = "was built without CUDA" if torch.version.cuda is None else "sees no CUDA GPU"
            problem = f"is not available: torch {torch.__version__} {build}"
        elif device.type == "mps" and torch.backends.mps.is_available():
            return device
        else:
            problem = "is not available here"
    raise DeviceError(f"--device {name} {problem}; available: {', '.join(available_devices())}.")


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runtime")
    group.add_argument("--runtime", "--backend", dest="runtime", default="torch", choices=RUNTIMES,
                       help="runtime for the networks; onnxruntime and tensorrt first export the ONNX files (and "
                            "build the engines) into --work-dir, reused while they match the model (--backend: "
                            "its former name)")
    group.add_argument("--work-dir", default=None,
                       help="folder for the exported ONNX files and TensorRT engines "
                            "(default outputs/runtimes/<preset or model folder name>)")


def resolve_runtime(pipe, args, grid=(2, 2)):
    """The runtime named by --runtime for ``pipe`` (None for torch), in the pipeline's precision.

    TensorRT gets one static engine per component for --tile-size (64x64 where the command has none); requests
    of other shapes are refused with an error naming the engines that exist.
    """
    if args.runtime == "torch":
        return None
    from pathlib import Path

    from ..export import ShapeBucket
    from ..export.runtime import prepare_runtime

    if args.dtype not in ("fp32", "fp16"):
        raise InvalidArgumentError(f"--runtime {args.runtime} runs fp32 or fp16 graphs, not --dtype {args.dtype}.")
    work_dir = Path(args.work_dir or Path("outputs/runtimes") / (Path(args.model).name if args.model else args.preset))
    tile = (getattr(args, "tile_size", None) or (64, 64)) if args.runtime == "tensorrt" else (64, 64)
    branches = (args.deepcache.branch,) if getattr(args, "deepcache", None) else ()  # its graph pair, exported too
    return prepare_runtime(args.runtime, pipe, work_dir, ShapeBucket(1, *tile, *grid), dtype=args.dtype,
                           deepcache_branches=branches)
