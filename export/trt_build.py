"""TensorRT engine builds from the exported ONNX files, through polygraphy (tensorrt imported lazily).

Default: one static engine per shape bucket (batch, tile H x W, grid) and component - the TensorRT demo's
default, and what CUDA graphs need. ``dynamic=True`` builds one engine per component with a min/opt/max
profile spanning the buckets instead. Engines are built strongly typed (types come from the ONNX graph: an
fp16 export gives an fp16 engine; TF32 only on request) by polygraphy's ``network_from_onnx_path``,
``CreateConfig`` and ``engine_bytes_from_network``, with an optional timing cache and a builder optimisation
level; the equivalent ``trtexec`` command is logged.

Engines are cached. An engine's key hashes everything it depends on: the SHA-256 of its ONNX files, the build
flags (strongly typed, TF32, optimisation level, workspace), the profile shapes, the TensorRT version and the
GPU (name and compute capability). An engine on disk is reused only when its sidecar holds the same key and the
engine file still has the SHA-256 recorded at build time; anything else is rebuilt. The sidecar also records
the weights fingerprint and configs of the pipeline the ONNX files came from, so an engine folder can be
checked against a pipeline without its ONNX files. Everything up to the builder call (plans, keys, cache
decisions, sidecars) runs without TensorRT.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from imagpose.errors import DeviceError, MissingDependencyError
from imagpose.io import atomic_file, write_json

from .components import COMPONENTS, CONTRACTS, ShapeBucket, axis_values, uses_grid
from .digests import changed_files, combined_digest
from .onnx_export import ExportError, verify_export

log = logging.getLogger("imagpose.export")
ENGINE_FORMAT_VERSION = 1  # bump when what goes into an engine or its sidecar changes
TRT_INSTALL_HINT = (
    "TensorRT is not installed. On a CUDA machine: pip install -c constraints.txt 'imagpose[trt]' "
    "(the tensorrt wheels come from NVIDIA's index, https://pypi.nvidia.com); the ONNX files and "
    "`imagpose export check-trt` work without it."
)


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise MissingDependencyError(TRT_INSTALL_HINT) from exc
    return tensorrt


@dataclass(frozen=True)
class BuildTarget:
    """What an engine is valid for: the TensorRT version that built it and the GPU it was built on."""

    tensorrt: str
    gpu: str
    compute_capability: tuple[int, int]

    @classmethod
    def current(cls, device="cuda") -> BuildTarget:
        """This machine's TensorRT and ``device``'s GPU."""
        import torch

        trt = import_tensorrt()
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            raise DeviceError(f"TensorRT engines run on a CUDA GPU, not on {device}"
                              f"{'' if torch.cuda.is_available() else ' (no CUDA GPU is visible here)'}; use the "
                              "onnxruntime or torch backend, or move the pipeline to cuda.")
        return cls(trt.__version__, torch.cuda.get_device_name(device), tuple(torch.cuda.get_device_capability(device)))

    def describe(self) -> str:
        major, minor = self.compute_capability
        return f"TensorRT {self.tensorrt} on {self.gpu} (compute capability {major}.{minor})"


@dataclass(frozen=True)
class BuildOptions:
    buckets: tuple[ShapeBucket, ...] = (ShapeBucket(),)
    dynamic: bool = False
    optimization_level: int = 3
    workspace_gib: float = 8.0
    tf32: bool = False  # TF32 math in fp32 layers (TensorRT's default is on; off keeps fp32 engines at fp32)
    timing_cache: str | None = None  # speeds builds up; not part of the key (it changes timing, not results)
    components: tuple[str, ...] = COMPONENTS


@dataclass
class EnginePlan:
    """One engine to build: its ONNX source (and that export's verified sidecar), output path, and the
    (min, opt, max) shape of every input."""

    component: str
    onnx_path: Path
    engine_path: Path
    profile: dict[str, tuple[tuple, tuple, tuple]]
    bucket: ShapeBucket | None  # None for a dynamic engine
    onnx: dict = field(repr=False)
    options: BuildOptions = field(repr=False)
    reused: bool = False  # set by build_engines: an engine with the same key was already on disk

    def key_fields(self, target: BuildTarget) -> dict:
        """Everything the engine depends on."""
        return {"format": ENGINE_FORMAT_VERSION, "component": self.component,
                "onnx_sha256": combined_digest(self.onnx["files"]), "strongly_typed": True,
                "tf32": self.options.tf32, "optimization_level": self.options.optimization_level,
                "workspace_bytes": int(self.options.workspace_gib * 2**30),
                "profile": {name: [list(shape) for shape in dims] for name, dims in self.profile.items()},
                "tensorrt": target.tensorrt, "gpu": target.gpu,
                "compute_capability": list(target.compute_capability)}

    def key(self, target: BuildTarget) -> str:
        return hashlib.sha256(json.dumps(self.key_fields(target), sort_keys=True).encode()).hexdigest()

    def trtexec_command(self) -> str:
        def shapes(index):
            return ",".join(f"{name}:{'x'.join(map(str, dims[index]))}" for name, dims in self.profile.items())

        parts = [f"trtexec --onnx={self.onnx_path}", f"--saveEngine={self.engine_path}", "--stronglyTyped",
                 *([] if self.options.tf32 else ["--noTF32"]),
                 f"--builderOptimizationLevel={self.options.optimization_level}",
                 f"--memPoolSize=workspace:{int(self.options.workspace_gib * 1024)}M",
                 f"--minShapes={shapes(0)}", f"--optShapes={shapes(1)}", f"--maxShapes={shapes(2)}"]
        if self.options.timing_cache:
            parts.append(f"--timingCacheFile={self.options.timing_cache}")
        return " ".join(parts)


def _static_profile(contract, bucket, config):
    shapes = contract.input_shapes(axis_values(bucket, config))
    return {name: (shape, shape, shape) for name, shape in shapes.items()}


def plan_builds(onnx_dir: str | Path, out_dir: str | Path, options: BuildOptions) -> list[EnginePlan]:
    """Check the ONNX folder (every file against its recorded SHA-256) and work out every engine to build."""
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
        if component not in manifest["components"]:
            raise ExportError(f"{component} was not exported to {onnx_dir}.")
        onnx = verify_export(onnx_dir, component)
        onnx_path = onnx_dir / onnx["file"]
        contract = CONTRACTS[component]
        if not onnx["options"]["dynamic"] and (options.dynamic or len(options.buckets) > 1):
            raise ExportError(f"{onnx_path} was exported with static shapes; export with dynamic axes to build "
                              "several buckets or a dynamic engine.")
        buckets = [b if uses_grid(component) else ShapeBucket(**{**asdict(b), "cfg": False}) for b in options.buckets]
        if options.dynamic:
            plans.append(EnginePlan(component, onnx_path, out_dir / f"{component}.dynamic.plan",
                                    contract.profile(buckets, config), None, onnx, options))
        else:
            plans += [EnginePlan(component, onnx_path, out_dir / f"{component}.{bucket.label()}.plan",
                                 _static_profile(contract, bucket, config), bucket, onnx, options)
                      for bucket in buckets]
    return plans


def cached_engine(plan: EnginePlan, target: BuildTarget) -> dict | None:
    """The sidecar of the engine on disk if it has ``plan``'s key for ``target`` and its file is unchanged."""
    try:
        sidecar = json.loads(plan.engine_path.with_suffix(".json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if sidecar.get("key") != plan.key(target):
        return None
    problems = changed_files(plan.engine_path.parent, sidecar["files"])
    if problems:
        log.warning("engine %s: not reused, rebuilding: %s", plan.engine_path.name, "; ".join(problems))
        return None
    return sidecar


def write_engine(plan: EnginePlan, target: BuildTarget, engine, seconds: float) -> dict:
    """Write a serialized engine and its sidecar (atomically, sidecar last) and return the sidecar."""
    data = memoryview(engine)
    sidecar_path = plan.engine_path.with_suffix(".json")
    sidecar_path.unlink(missing_ok=True)  # invalidate the old engine first
    with atomic_file(plan.engine_path) as handle:
        handle.write(data)
    sidecar = {
        "component": plan.component, "engine": plan.engine_path.name, "key": plan.key(target),
        "key_fields": plan.key_fields(target), "bucket": asdict(plan.bucket) if plan.bucket else None,
        "profile": {k: [list(s) for s in v] for k, v in plan.profile.items()},
        "files": {plan.engine_path.name: {"bytes": data.nbytes, "sha256": hashlib.sha256(data).hexdigest()}},
        "onnx": str(plan.onnx_path), "weights": plan.onnx["weights"], "configs": plan.onnx["configs"],
        "build_seconds": round(seconds, 1), "trtexec": plan.trtexec_command(),
    }
    write_json(sidecar_path, sidecar)
    return sidecar


def build_engine(plan: EnginePlan, target: BuildTarget) -> dict:
    """Build one engine with polygraphy and write it with its sidecar."""
    trt = import_tensorrt()
    from polygraphy.backend.trt import CreateConfig, Profile, engine_bytes_from_network, network_from_onnx_path
    from polygraphy.exception import PolygraphyException

    profile = Profile()
    for name, (low, opt, high) in plan.profile.items():
        profile.add(name, min=low, opt=opt, max=high)
    timing_cache = plan.options.timing_cache
    config = CreateConfig(profiles=[profile], tf32=plan.options.tf32,
                          builder_optimization_level=plan.options.optimization_level,
                          memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(plan.options.workspace_gib * 2**30)},
                          load_timing_cache=timing_cache)
    start = time.perf_counter()
    try:
        network = network_from_onnx_path(str(plan.onnx_path), strongly_typed=True)
        # the serialized engine, not engine_from_network + save_engine: no deserialisation, and we write it
        # atomically with its sidecar
        engine = engine_bytes_from_network(network, config=config, save_timing_cache=timing_cache)
    except PolygraphyException as exc:
        raise ExportError(f"TensorRT could not build {plan.engine_path.name} from {plan.onnx_path} ({exc}); see the "
                          f"TensorRT log above and run `imagpose export check-trt {plan.onnx_path}`.") from exc
    return write_engine(plan, target, engine, time.perf_counter() - start)


def build_engines(onnx_dir, out_dir, options: BuildOptions, dry_run: bool = False,
                  target: BuildTarget | None = None) -> list[EnginePlan]:
    """Plan, then build every engine whose key has no engine on disk yet (``dry_run``: plan only); writes
    ``out_dir/engines.json``, the index the runtime loads. ``target`` defaults to this machine's."""
    if not dry_run:
        target = target or BuildTarget.current()  # fail early (no tensorrt, no GPU), before hashing any file
    plans = plan_builds(onnx_dir, out_dir, options)
    if dry_run:
        for plan in plans:
            log.info("engine %s\n  equivalent: %s", plan.engine_path.name, plan.trtexec_command())
        return plans
    entries = []
    for plan in plans:
        entry = cached_engine(plan, target)
        plan.reused = entry is not None
        if entry is None:
            log.info("engine %s: building for %s\n  equivalent: %s", plan.engine_path.name, target.describe(),
                     plan.trtexec_command())
            entry = build_engine(plan, target)
        else:
            log.info("engine %s: cache hit (same ONNX, flags, TensorRT and GPU), not rebuilt", plan.engine_path.name)
        entries.append(entry)
    write_json(Path(out_dir) / "engines.json", {"onnx_dir": os.fspath(onnx_dir), "engines": entries})
    return plans
