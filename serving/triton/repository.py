"""Write a Triton Inference Server model repository that serves the pipeline.

    imagpose export triton --model DIR --runtime onnxruntime --out repo/     # NVIDIA's server image
    imagpose export triton --model DIR --runtime python --out repo/          # any server with the Python backend
    imagpose export triton --model DIR --runtime tensorrt --engines engines/ --out repo/   # from `export trt`

Layout (one model per network, plus the orchestrator clients call)::

    repo/
      imagpose/config.pbtxt          Python backend, dynamic batching; BYTES "request" -> BYTES "result"
      imagpose/1/model.py            calls imagpose.serving.triton.orchestrator
      imagpose/1/serving.json        what the repository serves: flavour, grid, dtypes, static shapes
      imagpose/1/pipeline/           the pipeline's configs (no weights: the networks hold them)
      unet/config.pbtxt              tensorrt_plan | onnxruntime_onnx | python
      unet/1/model.plan | model.onnx | model.py + model.onnx
      unet/engine.json | unet/onnx_export.json    the build record the file was checked against
      vae_encoder/ vae_decoder/ image_encoder/ flc_tokenizer/ pose_guider/   the same

Written with :class:`~imagpose.io.OutputFolder`: into ``out`` beside what is there, staged and moved into place when
everything (validation included) succeeded.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from imagpose.errors import InvalidArgumentError
from imagpose.export.components import COMPONENTS, ShapeBucket, model_config
from imagpose.export.digests import changed_files, file_record
from imagpose.export.onnx_export import ExportError, ExportOptions, export_pipeline, fingerprint, verify_export
from imagpose.io import OutputFolder

from .model_configs import (
    FLAVOURS,
    ORCHESTRATOR,
    NetworkShapes,
    config_text,
    network_config,
    orchestrator_config,
    shapes_from_export,
    shapes_from_profile,
)
from .orchestrator import SERVING_RECORD
from .pipeline_configs import write_pipeline_configs
from .validate import RepositoryError, validate_repository

MODEL_FILES = Path(__file__).parent / "model_files"
ENGINE_RECORD, ONNX_RECORD = "engine.json", "onnx_export.json"
NO_ENGINES = ("The tensorrt flavour serves TensorRT engines, built on the GPU that will serve them: "
              "`imagpose export onnx --model DIR --export-dtype fp16 --out onnx/ && imagpose export trt --onnx onnx/ "
              "--out engines/ --bucket 1,512x512,2x2`, then pass --engines engines/.")


@dataclass(frozen=True)
class RepositoryOptions:
    """How the repository serves.

    Attributes:
        runtime: "tensorrt" (model.plan), "onnxruntime" (model.onnx) or "python" (model.onnx on ONNX Runtime in
            the Python backend, for servers without the onnxruntime backend).
        max_batch_size: requests the orchestrator's dynamic batcher hands one ``execute()``.
        queue_delay_ms: how long the batcher waits for more requests.
        instances: orchestrator instances (each runs pipeline calls concurrently with the others).
        network_instances: instances of each network model.
        instance_kind: "gpu" or "cpu" for the networks; None: gpu for tensorrt, cpu otherwise.
    """

    runtime: str
    max_batch_size: int = 8
    queue_delay_ms: float = 50.0
    instances: int = 1
    network_instances: int = 1
    instance_kind: str | None = None

    def __post_init__(self):
        if self.runtime not in FLAVOURS:
            raise InvalidArgumentError(f"runtime must be one of {', '.join(FLAVOURS)}, got {self.runtime!r}.")
        for name in ("max_batch_size", "instances", "network_instances"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.queue_delay_ms < 0:
            raise InvalidArgumentError(f"queue_delay_ms must be >= 0, got {self.queue_delay_ms}.")
        if self.instance_kind not in (None, "gpu", "cpu"):
            raise InvalidArgumentError(f"instance_kind must be gpu or cpu, got {self.instance_kind!r}.")
        if self.runtime == "tensorrt" and self.instance_kind == "cpu":
            raise InvalidArgumentError("TensorRT engines run on GPU instances only; drop --instance-kind cpu.")

    @property
    def kind(self) -> str:
        return f"KIND_{(self.instance_kind or ('gpu' if self.runtime == 'tensorrt' else 'cpu')).upper()}"


@dataclass
class NetworkSource:
    """One network model to write: its shapes, the file(s) to copy and the build record they were checked with."""

    component: str
    shapes: NetworkShapes
    files: list[Path]
    record: dict
    record_name: str


# ----------------------------------------------------------------------------- sources
def onnx_sources(pipe, onnx_dir: Path) -> tuple[list[NetworkSource], dict]:
    """The ONNX export in ``onnx_dir`` (every file checked against its digest and against ``pipe``)."""
    manifest_path = onnx_dir / "manifest.json"
    if not manifest_path.is_file():
        raise ExportError(f"{onnx_dir} has no manifest.json; export it with `imagpose export onnx`.")
    manifest = json.loads(manifest_path.read_text())
    sources = []
    for component in COMPONENTS:
        if component not in manifest["components"]:
            raise ExportError(f"{component} is not in {manifest_path}; export every component with "
                              "`imagpose export onnx`.")
        sidecar = verify_export(onnx_dir, component)
        _check_matches(pipe, component, sidecar, onnx_dir / sidecar["file"])
        files = [onnx_dir / sidecar["file"]] + ([onnx_dir / sidecar["data_file"]] if sidecar["data_file"] else [])
        shapes = shapes_from_export(component, manifest["options"], manifest["model_config"])
        sources.append(NetworkSource(component, shapes, files, sidecar, ONNX_RECORD))
    options = manifest["options"]
    return sources, {"grid": manifest["grid"], "dtype": options["dtype"], "static": not options["dynamic"],
                     "buckets": [options["bucket"]]}


def engine_records(engines_dir: Path) -> tuple[dict, dict]:
    """``engines.json`` of ``imagpose export trt``: {component: build record} (one engine each) and the ONNX
    manifest the engines were built from."""
    index_path = engines_dir / "engines.json"
    if not index_path.is_file():
        raise ExportError(f"{engines_dir} holds no TensorRT engines (no engines.json). {NO_ENGINES}")
    index = json.loads(index_path.read_text())
    records: dict[str, list] = {}
    for entry in index["engines"]:
        records.setdefault(entry["component"], []).append(entry)
    missing = [c for c in COMPONENTS if c not in records]
    if missing:
        raise ExportError(f"{index_path} has no engine for {missing}. {NO_ENGINES}")
    several = {c: [e["engine"] for e in entries] for c, entries in records.items() if len(entries) > 1}
    if several:
        raise ExportError(f"A Triton model holds one engine, but {engines_dir} has several per network ({several}); "
                          "build one dynamic engine per network spanning the buckets (`imagpose export trt "
                          "--dynamic --bucket ... --bucket ...`) or one bucket.")
    manifest_path = Path(index["onnx_dir"]) / "manifest.json"
    if not manifest_path.is_file():
        raise ExportError(f"{index_path} was built from {index['onnx_dir']}, which has no manifest.json any more; "
                          "the repository needs its export options (dtype, grid): keep that folder beside the engines.")
    return {c: entries[0] for c, entries in records.items()}, json.loads(manifest_path.read_text())


def engine_sources(pipe, engines_dir: Path) -> tuple[list[NetworkSource], dict]:
    records, manifest = engine_records(engines_dir)
    config = model_config(pipe)
    dtype = manifest["options"]["dtype"]
    sources = []
    for component in COMPONENTS:
        record = records[component]
        problems = changed_files(engines_dir, record["files"])
        if problems:
            raise ExportError(f"{'; '.join(problems)}. Rebuild the engines with `imagpose export trt`.")
        _check_matches(pipe, component, record, engines_dir / record["engine"])
        shapes = shapes_from_profile(component, record["profile"], config, dtype)
        sources.append(NetworkSource(component, shapes, [engines_dir / record["engine"]], record, ENGINE_RECORD))
    buckets = [records[c]["bucket"] for c in COMPONENTS if records[c]["bucket"]]
    return sources, {"grid": manifest["grid"], "dtype": dtype, "static": bool(buckets), "buckets": buckets,
                     "unet_profile": records["unet"]["profile"]["sample"]}


def _check_matches(pipe, component: str, record: dict, path: Path) -> None:
    ours = fingerprint(pipe, component)
    if ours["weights"] != record["weights"] or ours["configs"] != record["configs"]:
        raise ExportError(f"{path} was built from other weights or another config than this pipeline; export it "
                          "again from this model (imagpose export onnx / trt).")


# ----------------------------------------------------------------------------- the orchestrator's record
def serving_record(pipe, flavour: str, sources: list[NetworkSource], export: dict) -> dict:
    """What the orchestrator checks requests against: the grid, static tile sizes and the UNet's row range."""
    pad = pipe.pad_multiple
    tile_sizes = latent_sizes = None
    if export["static"]:
        buckets = [ShapeBucket(**bucket) for bucket in export["buckets"]]
        tile_sizes = sorted({(b.tile_height, b.tile_width) for b in buckets})
        latent_sizes = sorted({b.layout(pad).latent_size for b in buckets})
    unet_rows = None
    if "unet_profile" in export:  # an engine: the profile's range of the CFG batch axis
        low, _, high = export["unet_profile"]
        unet_rows = [low[0], high[0]]
    elif export["static"]:
        rows = ShapeBucket(**export["buckets"][0]).batch * 2
        unet_rows = [rows, rows]
    return {"format": 1, "flavour": flavour, "grid": list(export["grid"]), "dtype": export["dtype"],
            "models": {source.component: source.component for source in sources},
            "input_types": {s.component: {name: t for name, (t, _) in s.shapes.inputs.items()} for s in sources},
            "tile_sizes": tile_sizes, "latent_sizes": latent_sizes, "unet_rows": unet_rows}


# ----------------------------------------------------------------------------- writing
def write_repository(pipe, out: str | Path, options: RepositoryOptions, onnx_dir: str | Path | None = None,
                     export_options: ExportOptions | None = None, engines_dir: str | Path | None = None) -> Path:
    """Write the repository for ``pipe`` into ``out`` and validate it before it is moved into place.

    ``onnx_dir``: an existing ``imagpose export onnx`` folder of this pipeline (else the networks are exported with
    ``export_options``); ``engines_dir``: an ``imagpose export trt`` folder (required by the tensorrt flavour).
    """
    from .model_configs import model_config_pb2

    model_config_pb2()  # tritonclient missing: fail before any export
    if options.runtime == "tensorrt" and engines_dir is None:
        raise InvalidArgumentError(f"--runtime tensorrt needs --engines DIR. {NO_ENGINES}")
    if options.runtime != "tensorrt" and engines_dir is not None:
        raise InvalidArgumentError("--engines is for --runtime tensorrt; the onnxruntime and python flavours serve "
                                   "ONNX files (--onnx DIR, or exported now).")
    with OutputFolder(out) as folder:
        # an export made now goes to a hidden folder beside the staging one (same file system), not into the
        # repository; it is removed when the block ends
        with tempfile.TemporaryDirectory(prefix=".imagpose-onnx-", dir=folder.target) as scratch:
            if engines_dir is not None:
                sources, export = engine_sources(pipe, Path(engines_dir))
            else:
                if onnx_dir is None:
                    onnx_dir = Path(scratch)
                    export_pipeline(pipe, onnx_dir, export_options or ExportOptions())
                sources, export = onnx_sources(pipe, Path(onnx_dir))
            for source in sources:
                _write_network(folder, source, options)
        record = serving_record(pipe, options.runtime, sources, export)
        _write_orchestrator(folder, pipe, options)
        record["files"] = served_file_records(folder.path(), [s.component for s in sources] + [ORCHESTRATOR])
        folder.write_json(f"{ORCHESTRATOR}/1/{SERVING_RECORD}", {**record, "options": asdict(options)})
        problems = validate_repository(folder.path())
        if problems:  # our own output fails Triton's schema or the files: nothing is moved into place
            raise RepositoryError("The repository written does not validate: " + "; ".join(problems))
    return Path(out)


def served_file_records(root: Path, models: list[str]) -> dict[str, dict]:
    """{path relative to the repository: size and SHA-256} of every file in the models' version folders (graphs,
    engines, external data, model.py, the orchestrator's pipeline configs; not the serving record itself): what
    `--check` compares the files with."""
    records = {}
    for model in models:
        for path in sorted((root / model / "1").rglob("*")):
            if path.is_file() and path.name != SERVING_RECORD:
                records[path.relative_to(root).as_posix()] = file_record(path)
    return records


def _write_network(folder: OutputFolder, source: NetworkSource, options: RepositoryOptions) -> None:
    component = source.component
    config = network_config(component, options.runtime, source.shapes, options.kind, options.network_instances)
    comment = (f"imagpose network {component!r}: written by `imagpose export triton "
               f"--runtime {options.runtime}`.\nmax_batch_size 0: full-rank dims, -1 where the export is dynamic; "
               "the orchestrator model `imagpose`\nbatches requests (see imagpose.serving.triton.model_configs).")
    Path(folder.path(f"{component}/config.pbtxt")).write_text(config_text(config, comment))
    for index, file in enumerate(source.files):
        # the graph or engine gets Triton's file name; an ONNX external-data file keeps the name the graph refers to
        name = file.name if index else ("model.plan" if options.runtime == "tensorrt" else "model.onnx")
        shutil.copyfile(file, folder.path(f"{component}/1/{name}"))
    if options.runtime == "python":
        shutil.copyfile(MODEL_FILES / "onnx_model.py", folder.path(f"{component}/1/model.py"))
    folder.write_json(f"{component}/{source.record_name}", source.record)


def _write_orchestrator(folder: OutputFolder, pipe, options: RepositoryOptions) -> None:
    config = orchestrator_config(options.max_batch_size, round(options.queue_delay_ms * 1000), options.instances)
    comment = ("imagpose: the pipeline (IMAGPosePipeline.__call__) over the network models; BYTES request (wire-format "
               "JSON,\nimagpose.serving.wire) -> BYTES result. Requests batched by the dynamic batcher run as one "
               "pipeline call\nper sampling setting.")
    Path(folder.path(f"{ORCHESTRATOR}/config.pbtxt")).write_text(config_text(config, comment))
    shutil.copyfile(MODEL_FILES / "orchestrator_model.py", folder.path(f"{ORCHESTRATOR}/1/model.py"))
    write_pipeline_configs(pipe, folder.path(f"{ORCHESTRATOR}/1/pipeline"))
