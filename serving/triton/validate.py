"""Offline checks of a model repository, before a server sees it.

    problems = validate_repository("repo/")        # [] when every check passes
    imagpose export triton --check repo/            # the same, exit 1 on a problem

Every ``config.pbtxt`` is parsed into Triton's ``ModelConfig`` protobuf (unknown fields and enum values fail), and
each network model's tensors are compared with the export contract (names, ranks, dtypes) and with the file it
serves: the graph's own input and output shapes for ONNX (read without its weights), the build record's profile for
a TensorRT engine (a plan cannot be opened without TensorRT and the GPU it was built for), whose SHA-256 is checked
too. A problem is a one-line string naming the model, the tensor and what differs.
"""

from __future__ import annotations

import json
from pathlib import Path

from imagpose.errors import IMAGPoseError
from imagpose.export.components import CONTRACTS
from imagpose.export.digests import changed_files

from .model_configs import ORCHESTRATOR, REQUEST_INPUT, RESULT_OUTPUT, model_config_pb2, parse_config, tensor_type
from .pipeline_configs import CONFIG_FILES

ONNX_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 7: "TYPE_INT64", 6: "TYPE_INT32"}


class RepositoryError(IMAGPoseError):
    """A model repository that a Triton server would refuse or serve wrongly."""


def validate_repository(repo: str | Path) -> list[str]:
    """Every problem found in the repository (empty: it validates)."""
    repo = Path(repo)
    if not repo.is_dir():
        return [f"{repo} is not a folder; write a repository with `imagpose export triton`."]
    from google.protobuf.text_format import ParseError

    model_config_pb2()  # tritonclient missing: MissingDependencyError, not a list of problems
    problems, configs = [], {}
    for folder in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        path = folder / "config.pbtxt"
        if not path.is_file():
            problems.append(f"{folder.name}: no config.pbtxt")
            continue
        try:
            configs[folder.name] = parse_config(path.read_text())
        except ParseError as exc:
            problems.append(f"{folder.name}: config.pbtxt does not parse as Triton's ModelConfig: {exc}")
    if not configs:
        return problems + [f"{repo} holds no models; write a repository with `imagpose export triton`."]
    record = None
    if ORCHESTRATOR not in configs:
        problems.append(f"{ORCHESTRATOR}: the orchestrator model is missing; write the repository with "
                        "`imagpose export triton`.")
    else:
        record = _serving_record(repo, problems)
    if record is not None:
        problems += _changed_file_problems(repo, record)
    for name, config in configs.items():
        where = f"{name}: config.pbtxt"
        if config.name and config.name != name:
            problems.append(f"{where} names the model {config.name!r}, but its folder is {name!r}")
        versions = sorted((p for p in (repo / name).iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(
            p.name))
        if not versions:
            problems.append(f"{name}: no version folder (e.g. {name}/1/)")
            continue
        if name == ORCHESTRATOR:
            problems += _orchestrator_problems(config, versions[-1], set(configs), record)
        elif name in CONTRACTS:
            dtype = (record or {}).get("dtype")
            problems += [p for v in versions for p in _network_problems(name, config, repo / name, v, dtype)]
        else:
            problems += _other_model_problems(name, config, versions)
    return problems


def _changed_file_problems(repo: Path, record: dict) -> list[str]:
    """The served files against the digests the serving record took when the repository was written."""
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        return [f"{ORCHESTRATOR}: serving.json records no file digests (a repository from an older imagpose); "
                "write it again with `imagpose export triton`."]
    return [f"{name.split('/')[0]}: {problem}" for name, problem in
            ((name, problem) for name in files for problem in changed_files(repo, {name: files[name]}))]


# Files Triton loads for the platforms and backends it ships, when config.pbtxt names no default_model_filename
DEFAULT_MODEL_FILES = {"onnxruntime_onnx": "model.onnx", "onnxruntime": "model.onnx", "tensorrt_plan": "model.plan",
                       "tensorrt": "model.plan", "python": "model.py", "pytorch_libtorch": "model.pt",
                       "pytorch": "model.pt", "tensorflow_savedmodel": "model.savedmodel"}


def _other_model_problems(name: str, config, versions: list[Path]) -> list[str]:
    """A model beside ours: Triton loads every model of the repository, so one it cannot load fails the server's
    start. Checked: a known platform or backend has its model file in every version folder."""
    kind = config.platform or config.backend
    default = DEFAULT_MODEL_FILES.get(kind)
    if default is None:
        return []  # a custom backend: only a server that has it can tell
    file = config.default_model_filename or default
    return [f"{name}: {version.name}/{file} is missing; Triton loads every model of the repository and would fail "
            f"to load {name!r} (remove it, or add its file)" for version in versions
            if not (version / file).exists()]


def _serving_record(repo: Path, problems: list[str]) -> dict | None:
    path = repo / ORCHESTRATOR / "1" / "serving.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        problems.append(f"{ORCHESTRATOR}: {path} is missing or not JSON ({exc})")
        return None


# ----------------------------------------------------------------------------- the orchestrator
def _orchestrator_problems(config, version: Path, models: set[str], record: dict | None) -> list[str]:
    pb = model_config_pb2()
    where = f"{ORCHESTRATOR}: config.pbtxt"
    problems = []
    if config.backend != "python":
        problems.append(f"{where} has backend {config.backend!r}; the orchestrator is a Python-backend model")
    if config.max_batch_size < 1 or not config.HasField("dynamic_batching"):
        problems.append(f"{where} needs max_batch_size >= 1 and dynamic_batching: requests are batched there")
    for kind, tensors, name in (("input", config.input, REQUEST_INPUT), ("output", config.output, RESULT_OUTPUT)):
        if [(t.name, t.data_type, list(t.dims)) for t in tensors] != [(name, pb.TYPE_STRING, [1])]:
            problems.append(f"{where}: the {kind} must be one TYPE_STRING tensor {name!r} with dims [1]")
    if not (version / "model.py").is_file():
        problems.append(f"{ORCHESTRATOR}: {version.name}/model.py is missing")
    missing = [f"{name}/{file}" for name, file in CONFIG_FILES.items()
               if not (version / "pipeline" / name / file).is_file()]
    if missing or not (version / "pipeline" / "model_index.json").is_file():
        problems.append(f"{ORCHESTRATOR}: the pipeline configs in {version.name}/pipeline are incomplete "
                        f"(missing {missing or ['model_index.json']})")
    if record is not None:
        absent = sorted(set(record["models"].values()) - models)
        if absent:
            problems.append(f"{ORCHESTRATOR}: serving.json calls models the repository lacks: {absent}")
    return problems


# ----------------------------------------------------------------------------- network models
def _network_problems(component: str, config, folder: Path, version: Path, dtype: str | None) -> list[str]:
    pb = model_config_pb2()
    contract = CONTRACTS[component]
    where = f"{component}: config.pbtxt"
    problems = []
    if config.max_batch_size != 0:
        problems.append(f"{where} has max_batch_size {config.max_batch_size}; the network models take full-rank "
                        "tensors (max_batch_size 0): their first axis is not a free batch axis (the UNet's is the "
                        "CFG batch)")
    for kind, tensors, specs in (("input", config.input, contract.inputs), ("output", config.output,
                                                                            contract.outputs)):
        names, expected = [t.name for t in tensors], [s.name for s in specs]
        if sorted(names) != sorted(expected):
            problems.append(f"{where}: {kind}s {names}, the export contract has {expected}")
        for tensor in tensors:
            spec = next((s for s in specs if s.name == tensor.name), None)
            if spec is not None and len(tensor.dims) != len(spec.shape):
                problems.append(f"{where}: {kind} {tensor.name!r} has dims {list(tensor.dims)}, rank "
                                f"{len(spec.shape)} expected {spec.shape}")
    actual = None
    if config.platform == "tensorrt_plan":
        actual, file_problems = _engine_shapes(component, folder, version, dtype)
        problems += file_problems
        kinds = {group.kind for group in config.instance_group}
        if kinds - {pb.ModelInstanceGroup.KIND_GPU, pb.ModelInstanceGroup.KIND_AUTO}:
            problems.append(f"{where}: TensorRT engines run on KIND_GPU instances only")
    elif config.platform == "onnxruntime_onnx" or config.backend in ("onnxruntime", "python"):
        if config.backend == "python" and not (version / "model.py").is_file():
            problems.append(f"{component}: {version.name}/model.py is missing")
        actual, file_problems = _onnx_shapes(version / (config.default_model_filename or "model.onnx"))
        problems += file_problems
    else:
        problems.append(f"{where}: platform {config.platform!r} / backend {config.backend!r} is none of "
                        "tensorrt_plan, onnxruntime_onnx, python")
    if actual is not None:
        for tensor in list(config.input) + list(config.output):
            if tensor.name in actual:
                problems += _compare(f"{where}: {tensor.name!r}", tensor, actual[tensor.name])
    return problems


def _compare(where: str, tensor, actual: tuple[str | None, list]) -> list[str]:
    """Config dims against the served file's: a fixed file axis needs that value or -1, a dynamic one -1 or any."""
    pb = model_config_pb2()
    data_type, dims = actual
    problems = []
    ours = pb.DataType.Name(tensor.data_type)
    if data_type is not None and ours != data_type:
        problems.append(f"{where} is {ours}, the served file takes {data_type}")
    if len(dims) != len(tensor.dims) or any(d != -1 and a is not None and d != a for d, a in zip(tensor.dims, dims)):
        shown = ["dynamic" if a is None else a for a in dims]
        problems.append(f"{where} has dims {list(tensor.dims)}, the served file has {shown}")
    return problems


def _onnx_shapes(path: Path) -> tuple[dict | None, list[str]]:
    import onnx

    if not path.is_file():
        return None, [f"{path.parent.parent.name}: {path.parent.name}/{path.name} is missing"]
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for a file that is not a model
        return None, [f"{path.parent.parent.name}: {path} is not a readable ONNX model ({exc})"]

    def shape(value):
        tensor_type = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        return ONNX_TYPES.get(tensor_type.elem_type, f"ONNX type {tensor_type.elem_type}"), dims

    return {v.name: shape(v) for v in list(model.graph.input) + list(model.graph.output)}, []


def _engine_shapes(component: str, folder: Path, version: Path, dtype: str | None) -> tuple[dict | None, list[str]]:
    """Input shapes from the engine's build record (``export.trt_build.write_engine``'s sidecar, copied as
    ``engine.json``), after checking ``model.plan`` is the engine it describes."""
    path = folder / "engine.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return None, [f"{component}: {path} (the engine's build record) is missing or not JSON ({exc})"]
    problems = []
    plan = version / "model.plan"
    if not plan.is_file():
        problems.append(f"{component}: {version.name}/model.plan is missing")
    else:
        files = {"model.plan": next(iter(record["files"].values()))}
        problems += [f"{component}: {p}" for p in changed_files(version, files)]
    return profile_shapes(component, record["profile"], dtype), problems


def profile_shapes(component: str, profile: dict, dtype: str | None) -> dict:
    """{input: (type, dims)} of an engine profile ({input: [min, opt, max]}): an axis is fixed where min == max."""
    return {name: (tensor_type(component, name, dtype) if dtype else None,
                   [lo if lo == hi else None for lo, hi in zip(low, high)])
            for name, (low, _, high) in profile.items()}


def check_network_config(component: str, config, actual: dict) -> list[str]:
    """The tensor checks of one network config against {tensor: (type, dims)} of the file it serves."""
    return [p for tensor in list(config.input) + list(config.output) if tensor.name in actual
            for p in _compare(f"{component}: config.pbtxt: {tensor.name!r}", tensor, actual[tensor.name])]
