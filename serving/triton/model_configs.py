"""``config.pbtxt`` of every model of the repository, built as Triton's own ``ModelConfig`` protobuf message.

Names, dims and dtypes come from :data:`imagpose.export.components.CONTRACTS` and the export's numbers (its
``model_config`` and options, or a TensorRT engine's profile), never retyped.

Batching. Every network model has ``max_batch_size: 0`` and full-rank dims (-1 for a dynamic axis), so Triton
neither adds nor splits a batch axis of its own: the contracts' first axis is not a free batch axis everywhere.
The UNet's is the CFG batch 2B, rows ordered ``[uncond (B), cond (B)]``, and a static engine (the TensorRT
default) fixes it at 2 for one request; the encoders and the decoder run one request at a time on purpose
(``imagpose.conditions.encode_conditions``: a request's images must not depend on what it is batched with).
Batching happens one level up, where it keeps those properties: the orchestrator model ``imagpose`` has the
dynamic batcher, and one ``execute()`` runs every queued request with the same sampling settings as one
pipeline call, whose UNet calls carry all their rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from imagpose.errors import MissingDependencyError
from imagpose.export.components import CONTRACTS, DYNAMIC_SYMBOLS, ShapeBucket, axis_values

ORCHESTRATOR = "imagpose"  # the model clients call
REQUEST_INPUT, RESULT_OUTPUT = "request", "result"
FLAVOURS = {  # flavour -> (platform, backend, the version folder's model file)
    "tensorrt": ("tensorrt_plan", None, "model.plan"),
    "onnxruntime": ("onnxruntime_onnx", None, "model.onnx"),
    "python": (None, "python", "model.py"),
}
DATA_TYPES = {"fp32": "TYPE_FP32", "fp16": "TYPE_FP16"}


def model_config_pb2():
    """Triton's ModelConfig schema (from tritonclient, the ``serve`` extra)."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise MissingDependencyError("Triton model repositories need tritonclient: pip install -c constraints.txt "
                                     "'imagpose[serve]'.") from exc
    return model_config_pb2


@dataclass(frozen=True)
class NetworkShapes:
    """Every tensor of one network: {name: (data type, dims)}, dims with -1 for a dynamic axis."""

    inputs: dict[str, tuple[str, tuple[int, ...]]]
    outputs: dict[str, tuple[str, tuple[int, ...]]]


def tensor_type(component: str, name: str, dtype: str) -> str:
    """The exported tensor's type: the export dtype, but the UNet's timestep stays fp32."""
    return "TYPE_FP32" if name in CONTRACTS[component].float_inputs else DATA_TYPES[dtype]


def shapes_from_export(component: str, export_options: dict, model_config: dict) -> NetworkShapes:
    """The shapes of an ONNX export (``export_pipeline``'s options and ``model_config``): its dynamic axes are -1;
    a static export has the sample bucket's numbers (batch 1 outside the UNet's CFG batch)."""
    bucket = ShapeBucket(**export_options["bucket"])
    if component != "unet":
        bucket = ShapeBucket(**{**export_options["bucket"], "cfg": False})
    values = axis_values(bucket, model_config)
    if export_options["dynamic"]:
        values.update({symbol: -1 for symbol in DYNAMIC_SYMBOLS})
    return _shapes(component, values, export_options["dtype"])


def shapes_from_profile(component: str, profile: dict, model_config: dict, dtype: str) -> NetworkShapes:
    """The shapes a TensorRT engine takes: an axis whose (min, max) differ is -1, a fixed one keeps its value."""
    contract = CONTRACTS[component]
    values = {k: model_config[k] for k in ("T", "D", "C0")}
    for spec in contract.inputs:
        low, _, high = profile[spec.name]
        for axis, symbol in enumerate(spec.shape):
            if isinstance(symbol, str):
                values[symbol] = low[axis] if low[axis] == high[axis] else -1
    # the output axes no input has, from the input axes they follow (the contracts' definitions, axis_values)
    scale, patch = model_config["vae_scale"], model_config["flc_patch"]
    for latent, pixel in (("H", "PH"), ("W", "PW")):
        if pixel in values and latent not in values:
            values[latent] = -1 if values[pixel] == -1 else values[pixel] // scale
        if latent in values and pixel not in values:
            values[pixel] = -1 if values[latent] == -1 else values[latent] * scale
    if "H" in values and "F" not in values:
        fixed = values["H"] != -1 and values["W"] != -1
        values["F"] = (values["H"] // patch) * (values["W"] // patch) if fixed else -1
    return _shapes(component, values, dtype)


def _shapes(component: str, values: dict, dtype: str) -> NetworkShapes:
    contract = CONTRACTS[component]

    def table(specs):
        return {spec.name: (tensor_type(component, spec.name, dtype), spec.dims(values)) for spec in specs}

    return NetworkShapes(table(contract.inputs), table(contract.outputs))


def network_config(component: str, flavour: str, shapes: NetworkShapes, instance_kind: str,
                   instances: int = 1):
    """The ModelConfig of one network model (see the module docstring for ``max_batch_size: 0``)."""
    pb = model_config_pb2()
    platform, backend, filename = FLAVOURS[flavour]
    config = pb.ModelConfig(name=component, max_batch_size=0)
    if platform:
        config.platform = platform
        config.default_model_filename = filename
    else:
        config.backend = backend
    for name, (data_type, dims) in shapes.inputs.items():
        config.input.add(name=name, data_type=pb.DataType.Value(data_type), dims=list(dims))
    for name, (data_type, dims) in shapes.outputs.items():
        config.output.add(name=name, data_type=pb.DataType.Value(data_type), dims=list(dims))
    config.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.Kind.Value(instance_kind))
    return config


def orchestrator_config(max_batch_size: int, queue_delay_us: int, instances: int):
    """The ModelConfig of the ``imagpose`` model: one wire-format request in, one result out, per batch row; the
    dynamic batcher hands one ``execute()`` every request queued within ``queue_delay_us``."""
    pb = model_config_pb2()
    config = pb.ModelConfig(name=ORCHESTRATOR, backend="python", max_batch_size=max_batch_size)
    config.input.add(name=REQUEST_INPUT, data_type=pb.TYPE_STRING, dims=[1])
    config.output.add(name=RESULT_OUTPUT, data_type=pb.TYPE_STRING, dims=[1])
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    # the pipeline runs on the CPU (canvases, scheduler); the networks' work is in the models it calls
    config.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.KIND_CPU)
    return config


def config_text(config, comment: str) -> str:
    from google.protobuf import text_format

    header = "".join(f"# {line}\n".replace("# \n", "#\n") for line in comment.strip().splitlines())
    return header + text_format.MessageToString(config, use_short_repeated_primitives=True)


def parse_config(text: str):
    """A ``config.pbtxt`` as a ModelConfig message; unknown fields and enum values raise ``ParseError``."""
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2().ModelConfig())
