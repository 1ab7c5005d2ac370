"""TensorRT engine builds from the exported ONNX files (tensorrt Python API, imported lazily).

Default: one static engine per shape bucket (batch, tile H x W, grid) and component - the TensorRT demo's
default, and what CUDA graphs need. ``dynamic=True`` builds one engine per component with a min/opt/max
profile spanning the buckets instead. Engines are built strongly typed (types come from the ONNX graph: an
fp16 export gives an fp16 engine), with an optional timing cache and a builder optimisation level. Every
engine gets a JSON sidecar (versions, shapes, GPU name, the ONNX cache key) and the equivalent ``trtexec``
command is printed. :func:`plan_builds` does everything up to the builder call and needs no TensorRT.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from imagpose.io import atomic_file, write_json

from .components import COMPONENTS, CONTRACTS, ShapeBucket
from .onnx_export import ExportError, read_metadata

log = logging.getLogger("imagpose.export")
TRT_INSTALL_HINT = (
    "TensorRT is not installed. On a CUDA machine: pip install -c constraints.txt 'imagpose[trt]' "
    "(the tensorrt wheels come from NVIDIA's index, https://pypi.nvidia.com); the ONNX files and "
    "`imagpose export check-trt` work without it."
)


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise ImportError(TRT_INSTALL_HINT) from exc
    return tensorrt


@dataclass(frozen=True)
class BuildOptions:
    buckets: tuple[ShapeBucket, ...] = (ShapeBucket(),)
    dynamic: bool = False
    optimization_level: int = 3
    workspace_gib: float = 8.0
    timing_cache: str | None = None
    components: tuple[str, ...] = COMPONENTS


@dataclass
class EnginePlan:
    """One engine to build: its ONNX source, output path, and the (min, opt, max) shape of every input."""

    component: str
    onnx_path: Path
    engine_path: Path
    profile: dict[str, tuple[tuple, tuple, tuple]]
    bucket: ShapeBucket | None  # None for a dynamic engine
    onnx_cache_key: str
    options: BuildOptions = field(repr=False, default=None)

    def trtexec_command(self) -> str:
        def shapes(index):
            return ",".join(f"{name}:{'x'.join(map(str, dims[index]))}" for name, dims in self.profile.items())

        parts = [f"trtexec --onnx={self.onnx_path}", f"--saveEngine={self.engine_path}", "--stronglyTyped",
                 f"--builderOptimizationLevel={self.options.optimization_level}",
                 f"--memPoolSize=workspace:{int(self.options.workspace_gib * 1024)}M",
                 f"--minShapes={shapes(0)}", f"--optShapes={shapes(1)}", f"--maxShapes={shapes(2)}"]
        if self.options.timing_cache:
            parts.append(f"--timingCacheFile={self.options.timing_cache}")
        return " ".join(parts)


def _static_profile(contract, bucket, config):
    from .components import axis_values

    shapes = contract.input_shapes(axis_values(bucket, config))
    return {name: (shape, shape, shape) for name, shape in shapes.items()}


def plan_builds(onnx_dir: str | Path, out_dir: str | Path, options: BuildOptions) -> list[EnginePlan]:
    """Check the ONNX folder and work out every engine to build (no TensorRT needed)."""
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    manifest_path = onnx_dir / "manifest.json"
    if not manifest_path.is_file():
        raise ExportError(f"{onnx_dir} has no manifest.json; export it first with `imagpose export onnx`.")
    manifest = json.loads(manifest_path.read_text())
    config, grid = manifest["model_config"], tuple(manifest["grid"])
    bad_grid = [b.label() for b in options.buckets if (b.rows, b.cols) != grid]
    if bad_grid:
        raise ExportError(f"Buckets {bad_grid} use another grid than the exported UNet ({grid[0]}x{grid[1]}); "
                          "re-export the ONNX files with that grid.")
    plans = []
    for component in options.components:
        entry = manifest["components"].get(component)
        if entry is None:
            raise ExportError(f"{component} was not exported to {onnx_dir}.")
        onnx_path = onnx_dir / entry["file"]
        meta = read_metadata(onnx_path)
        contract = CONTRACTS[component]
        if not meta["options"]["dynamic"] and (options.dynamic or len(options.buckets) > 1):
            raise ExportError(f"{onnx_path} was exported with static shapes; export with dynamic axes to build "
                              "several buckets or a dynamic engine.")
        buckets = [b if component == "unet" else ShapeBucket(**{**asdict(b), "cfg": False}) for b in options.buckets]
        if options.dynamic:
            plans.append(EnginePlan(component, onnx_path, out_dir / f"{component}.dynamic.plan",
                                    contract.profile(buckets, config), None, meta["cache_key"], options))
        else:
            for bucket in buckets:
                plans.append(EnginePlan(component, onnx_path, out_dir / f"{component}.{bucket.label()}.plan",
                                        _static_profile(contract, bucket, config), bucket, meta["cache_key"],
                                        options))
    return plans


def build_engine(plan: EnginePlan) -> dict:
    """Build one engine with the tensorrt API and write it (atomically) with its JSON sidecar."""
    trt = import_tensorrt()
    import torch

    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {plan.onnx_path}: {errors}. Run `imagpose export check-trt`.")
    config = builder.create_builder_config()
    config.builder_optimization_level = plan.options.optimization_level
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(plan.options.workspace_gib * 2**30))
    cache_path = Path(plan.options.timing_cache) if plan.options.timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in plan.profile.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build {plan.engine_path.name}; see the TensorRT log above.")
    plan.engine_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(plan.engine_path) as handle:
        handle.write(serialized)
    if cache_path:
        with atomic_file(cache_path) as handle:
            handle.write(memoryview(cache.serialize()))
    sidecar = {
        "component": plan.component, "engine": plan.engine_path.name, "onnx": str(plan.onnx_path),
        "onnx_cache_key": plan.onnx_cache_key, "bucket": asdict(plan.bucket) if plan.bucket else None,
        "profile": {k: [list(s) for s in v] for k, v in plan.profile.items()},
        "tensorrt": trt.__version__, "torch": torch.__version__, "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "optimization_level": plan.options.optimization_level, "strongly_typed": True,
        "build_seconds": round(time.perf_counter() - start, 1), "trtexec": plan.trtexec_command(),
    }
    write_json(plan.engine_path.with_suffix(".json"), sidecar)
    return sidecar


def build_engines(onnx_dir, out_dir, options: BuildOptions, dry_run: bool = False) -> list[EnginePlan]:
    """Plan, print the trtexec equivalents, and (unless ``dry_run``) build; writes ``out_dir/engines.json``."""
    plans = plan_builds(onnx_dir, out_dir, options)
    for plan in plans:
        log.info("engine %s\n  equivalent: %s", plan.engine_path.name, plan.trtexec_command())
    if dry_run:
        return plans
    import_tensorrt()
    built = [build_engine(plan) for plan in plans]
    write_json(Path(out_dir) / "engines.json", {"onnx_dir": os.fspath(onnx_dir), "engines": built})
    return plans
