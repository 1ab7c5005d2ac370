"""Post-training quantization of the UNet with NVIDIA Model Optimizer (INT8 or FP8), exported as a Q/DQ graph.

    requests = generated_requests(4, tile_size=(128, 96))              # generated people, never trained on
    export_quantized_unet(pipe, "int8/", requests, precision="int8")   # a complete export folder
    backend = OnnxRuntimeBackend.for_pipeline(pipe, "int8/")           # the UNet in INT8, the rest fp32

Recipe (the one of Model Optimizer's diffusers example, ``examples/diffusers/quantization``):
    - calibration data: the UNet inputs of real pipeline calls (every step, both CFG halves) on ``requests``,
      recorded through the Runtime seam while the fp32 PyTorch reference generates them;
    - every ``nn.Linear`` and ``nn.Conv2d`` of the UNet: weights per output channel, inputs per tensor, scales
      from the calibration maxima (``algorithm="max"``) or SmoothQuant (``"smoothquant"``, alpha 0.8, the
      TensorRT diffusion demo's INT8 setting) -- except the layers in ``FLOAT_LAYERS``;
    - in float: the layers in ``FLOAT_LAYERS``, normalisations (GroupNorm, LayerNorm), softmax and the attention
      matmuls (Q K^T and attention x V: no weights), elementwise ops.
The fake-quantized module is exported by the TorchScript exporter; Model Optimizer writes QuantizeLinear /
DequantizeLinear pairs (FP8: its ``trt::TRT_FP8*`` ops, rewritten here into the opset-19 ONNX ops with a
FLOAT8E4M3FN zero point). Weight quantizers are then folded: each weight is stored as INT8 (FP8) with one
DequantizeLinear in front of its Conv/MatMul/Gemm, the explicitly quantized form TensorRT builds, each weight in a
quarter of its fp32 bytes. ONNX Runtime runs the INT8 graph on CPU; the FP8 graph needs TensorRT on a GPU of
compute capability >= 8.9 (see docs/fast_sampling.md for what ONNX Runtime's CPU provider does with it).

The folder follows the export convention (``manifest.json`` + ``<component>.onnx`` + ``<component>.json``
sidecars with SHA-256 of every file): the other components are ordinary fp32 exports, and the UNet's sidecar
records the fp32 weights it was quantized from (so ``OnnxRuntimeBackend.for_pipeline`` checks it against the
pipeline), the quantization settings and a digest of the calibration canvases. A second call with the same
pipeline, settings and calibration requests reuses the files.

Model Optimizer (``pip install -c constraints.txt 'imagpose[quant]'``) is imported only when quantizing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from imagpose.errors import InvalidArgumentError, MissingDependencyError
from imagpose.io import make_output_folder, refuse_non_folder, write_json
from imagpose.runtime import RuntimeWrapper
from imagpose.sampling_config import SamplingConfig
from imagpose.seeds import CALIBRATION_PEOPLE_SEED

from .components import COMPONENTS, CONTRACTS, ComponentModule, ShapeBucket, model_config
from .digests import file_record
from .onnx_export import ExportError, ExportOptions, _cached, describe, export_pipeline
from .passes import cleanup_toposort, fold_constants, infer_and_check, name_dynamic_axes, save_model
from .staged_export import staged_export

log = logging.getLogger("imagpose.export")

PRECISIONS = ("int8", "fp8")
ALGORITHMS = ("max", "smoothquant")
# Kept in float, as the NVIDIA diffusers recipe does: the first and last convolutions (the 9-channel input with
# the flag and masked latent, and the prediction), the timestep embedding, and the resnets' 1x1 shortcuts.
FLOAT_LAYERS = ("conv_in", "conv_out", "time_embedding", "time_emb_proj", "conv_shortcut")
OPSETS = {"int8": 17, "fp8": 19}  # FP8 QuantizeLinear is an opset-19 op; INT8 keeps TensorRT's GroupNorm form
SMOOTHQUANT_ALPHA = 0.8  # the TensorRT diffusion demo's --int8 setting
QUANT_INSTALL_HINT = ("Quantization needs NVIDIA Model Optimizer: pip install -c constraints.txt 'imagpose[quant]' "
                      "(nvidia-modelopt; CPU is enough to quantize and export).")


def import_modelopt():
    try:
        import modelopt.torch.quantization as mtq
    except ImportError as exc:
        raise MissingDependencyError(QUANT_INSTALL_HINT) from exc
    return mtq


@dataclass(frozen=True)
class QuantizeOptions:
    """How the UNet is quantized and calibrated.

    Attributes:
        precision: "int8" or "fp8" (E4M3).
        algorithm: "max" (calibration maxima) or "smoothquant" (INT8 only: activation outliers moved into the
            Linear weights, alpha 0.8).
        steps, guidance_scale: the sampling settings of the calibration calls (every step's input is recorded).
    """

    precision: str = "int8"
    algorithm: str = "max"
    steps: int = SamplingConfig.num_inference_steps
    guidance_scale: float = SamplingConfig.guidance_scale

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise InvalidArgumentError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}.")
        if self.algorithm not in ALGORITHMS:
            raise InvalidArgumentError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}.")
        if self.algorithm == "smoothquant" and self.precision != "int8":
            raise InvalidArgumentError("SmoothQuant is an INT8 recipe; use algorithm='max' for fp8.")
        SamplingConfig(self.steps, self.guidance_scale)  # refuses steps or a guidance scale out of range


# ----------------------------------------------------------------------------- calibration data
def generated_requests(count: int, tile_size: tuple[int, int], grid: tuple[int, int] = (2, 2),
                       seed: int = CALIBRATION_PEOPLE_SEED) -> list:
    """``count`` T2 requests (one source repeated, one target pose) of generated people: identity ``i`` of
    ``seed`` in two poses, drawn by :mod:`imagpose.synthetic` (the generator the shipped model was trained
    with; ``seed`` keeps them apart from its training and held-out people)."""
    if not isinstance(count, int) or count < 1:
        raise InvalidArgumentError(f"Calibration needs at least one request, got {count!r}; pass 1 or more "
                                   "(Model Optimizer's diffusers example calibrates on 32 prompts at full size).")
    from imagpose import scenarios
    from imagpose.synthetic.dataset import identity_rng
    from imagpose.synthetic.looks import sample_look, sample_scene
    from imagpose.synthetic.poses import sample_pose
    from imagpose.synthetic.rasterizer import draw_view

    requests = []
    for index in range(count):
        rng = identity_rng(seed, index)
        look = sample_look(rng)
        scene = sample_scene(rng, look)
        source, target = (draw_view(look, sample_pose(rng, can_sit=scene.seat is not None), scene, tile_size)
                          for _ in range(2))
        requests.append(scenarios.t2(source.image, source.keypoints, target.keypoints, grid=tuple(grid),
                                     tile_size=tuple(tile_size), seed=index, name=f"people-{seed}-{index}"))
    return requests


@dataclass
class UNetCall:
    """One UNet call's inputs in the export contract's form (one timestep per row)."""

    sample: torch.Tensor
    timestep: torch.Tensor
    context: torch.Tensor
    pose_features: torch.Tensor
    grid: tuple[int, int]

    @property
    def inputs(self) -> tuple[torch.Tensor, ...]:
        return self.sample, self.timestep, self.context, self.pose_features


class RecordingRuntime(RuntimeWrapper):
    """A runtime that passes every call to ``inner`` and keeps a copy of each UNet call's inputs (and outputs)."""

    def __init__(self, inner):
        super().__init__(inner, f"recording {inner.name}")
        self.calls: list[UNetCall] = []
        self.outputs: list[torch.Tensor] = []

    def call(self, method: str, *args):
        output = super().call(method, *args)
        if method == "unet":
            sample, timestep, context, pose_features, grid = args
            rows = timestep.float().reshape(-1).expand(sample.shape[0])
            self.calls.append(UNetCall(sample.detach().clone(), rows.clone(), context.detach().clone(),
                                       pose_features.detach().clone(), tuple(grid)))
            self.outputs.append(output.detach().clone())
        return output


@torch.no_grad()
def record_unet_calls(pipe, requests, steps: int = SamplingConfig.num_inference_steps,
                      guidance_scale: float = SamplingConfig.guidance_scale) -> list[UNetCall]:
    """The UNet inputs of the fp32 reference generating ``requests`` (one call per request, so memory stays that
    of one request): ``len(requests) * steps`` calls."""
    recorder = RecordingRuntime(pipe.torch_runtime())
    for request in requests:
        pipe(request, num_inference_steps=steps, guidance_scale=guidance_scale, output_type="latent",
             progress=False, runtime=recorder)
    return recorder.calls


def calibration_digest(pipe, requests, options: QuantizeOptions) -> str:
    """SHA-256 of what calibration sees before the UNet runs: every request's joint canvas and seed, and the
    sampling settings. Building canvases is image work only, so a cached export is found without a UNet call."""
    digest = hashlib.sha256(json.dumps([options.steps, options.guidance_scale]).encode())
    for request in requests:
        canvas = pipe.build_canvas(request)
        for tensor in (canvas.person, canvas.pose, canvas.flag):
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        digest.update(json.dumps([request.seed, list(request.grid), canvas.roles]).encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- Model Optimizer
def quantization_config(precision: str, algorithm: str = "max") -> dict:
    """The Model Optimizer config: every quantizer off, then Linear and Conv2d weights (per output channel for
    INT8; per tensor for FP8, as Model Optimizer's FP8 recipe) and inputs (per tensor) on, then ``FLOAT_LAYERS``
    off again. SmoothQuant calibrates Linear inputs per channel (axis -1) to compute its smoothing scales."""
    QuantizeOptions(precision, algorithm)  # the one place the names are checked
    bits = 8 if precision == "int8" else (4, 3)
    weight_axis = 0 if precision == "int8" else None
    linear_input_axis = -1 if algorithm == "smoothquant" else None
    entries = [{"quantizer_name": "*", "enable": False}]
    for layer, input_axis in (("nn.Linear", linear_input_axis), ("nn.Conv2d", None)):
        entries += [{"quantizer_name": "*weight_quantizer", "parent_class": layer,
                     "cfg": {"num_bits": bits, "axis": weight_axis}},
                    {"quantizer_name": "*input_quantizer", "parent_class": layer,
                     "cfg": {"num_bits": bits, "axis": input_axis}}]
    entries += [{"quantizer_name": f"*.{name}.*", "enable": False} for name in FLOAT_LAYERS]
    entries += [{"quantizer_name": f"*.{name}.*.*", "enable": False} for name in FLOAT_LAYERS]
    method = {"method": "smoothquant", "alpha": SMOOTHQUANT_ALPHA} if algorithm == "smoothquant" else "max"
    return {"quant_cfg": entries, "algorithm": method}


def quantize_unet(pipe, calls: list[UNetCall], options: QuantizeOptions) -> torch.nn.Module:
    """A fake-quantized copy of the UNet as the export module (``ComponentModule``), calibrated on ``calls``; the
    pipeline's own UNet is not touched."""
    mtq = import_modelopt()
    if not calls:
        raise InvalidArgumentError("Calibration recorded no UNet call; pass at least one request.")
    grids = {call.grid for call in calls}
    if len(grids) != 1:
        raise InvalidArgumentError(f"Calibration requests use several grids {sorted(grids)}; the exported UNet bakes "
                                   "in one: calibrate on requests of one grid.")
    unet = copy.deepcopy(pipe.unet).float()
    parts = SimpleNamespace(unet=unet, vae=pipe.vae, image_encoder=pipe.image_encoder,
                            flc_tokenizer=pipe.flc_tokenizer, pose_guider=pipe.pose_guider)
    module = ComponentModule(parts, "unet", grids.pop()).eval()

    def forward_loop(model):
        for call in calls:
            model(*call.inputs)

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mtq.quantize(module, quantization_config(options.precision, options.algorithm), forward_loop=forward_loop)
    return module


# ----------------------------------------------------------------------------- Q/DQ graph passes
def native_fp8_qdq(model):
    """Model Optimizer's ``trt::TRT_FP8QuantizeLinear`` / ``TRT_FP8DequantizeLinear`` -> the ONNX opset-19
    QuantizeLinear / DequantizeLinear with a FLOAT8E4M3FN zero point (saturating), which TensorRT's parser reads.
    Hand-written: Model Optimizer's own pass (``modelopt.onnx.export``) needs its [onnx] extra, which pins another
    onnx and pulls onnxruntime-gpu."""
    import onnx

    zero = onnx.helper.make_tensor("fp8_zero_point", onnx.TensorProto.FLOAT8E4M3FN, [], [0.0])
    model.graph.initializer.append(zero)
    quantized = set()
    for node in model.graph.node:
        if node.domain == "trt" and node.op_type in ("TRT_FP8QuantizeLinear", "TRT_FP8DequantizeLinear"):
            node.op_type, node.domain = node.op_type.replace("TRT_FP8", ""), ""
            node.input.append(zero.name)
            if node.op_type == "QuantizeLinear":
                node.attribute.append(onnx.helper.make_attribute("saturate", 1))
                quantized.update(node.output)
    kept = [v for v in model.graph.value_info if v.name not in quantized]  # the exporter typed them uint8
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    opsets = [o for o in model.opset_import if o.domain not in ("", "ai.onnx", "trt")]
    del model.opset_import[:]
    model.opset_import.extend([onnx.helper.make_opsetid("", OPSETS["fp8"]), *opsets])
    return model


def fold_weight_quantization(model):
    """Quantize every constant weight ahead of time: a QuantizeLinear whose input, scale and zero point are
    constants becomes an INT8 (FP8) initializer that keeps its DequantizeLinear, the form TensorRT reads as a
    quantized weight, in a quarter of the bytes. Activation Q/DQ pairs stay. Hand-written: graphsurgeon's and
    polygraphy's constant folding leave Q/DQ nodes alone on purpose."""
    import onnx
    from onnx import numpy_helper

    # the exporter writes scales and zero points as Constant nodes; as initializers they are looked up by name
    for node in [n for n in model.graph.node if n.op_type == "Constant" and n.attribute[0].name == "value"]:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(node.attribute[0].t)
        tensor.name = node.output[0]
        model.graph.initializer.append(tensor)
        model.graph.node.remove(node)
    initializers = {t.name: t for t in model.graph.initializer}
    folded = []
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or not all(name in initializers for name in node.input):
            continue
        weight, scale, zero_point = (numpy_helper.to_array(initializers[name]) for name in node.input)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:  # per channel: broadcast along ``axis``
            shape = [1] * weight.ndim
            shape[axis] = scale.size
            scale = scale.reshape(shape)
        quantized = _quantize(torch.from_numpy(weight.copy()), torch.from_numpy(scale.astype("float32")),
                              initializers[node.input[2]].data_type)
        model.graph.initializer.append(quantized_initializer(quantized, node.output[0]))
        folded.append(node)
    for node in folded:
        model.graph.node.remove(node)
    return cleanup_toposort(model)


def _quantize(weight: torch.Tensor, scale: torch.Tensor, data_type: int) -> torch.Tensor:
    """ONNX QuantizeLinear with a zero zero point: round half to even, saturate."""
    import onnx

    if data_type == onnx.TensorProto.INT8:
        return torch.clamp(torch.round(weight / scale), -128, 127).to(torch.int8)
    if data_type == onnx.TensorProto.FLOAT8E4M3FN:
        return torch.clamp(weight / scale, -448.0, 448.0).to(torch.float8_e4m3fn)
    raise ExportError(f"cannot fold a weight QuantizeLinear to ONNX type {data_type}")  # our exporter wrote it


def quantized_initializer(tensor: torch.Tensor, name: str):
    import onnx

    data_type = onnx.TensorProto.INT8 if tensor.dtype == torch.int8 else onnx.TensorProto.FLOAT8E4M3FN
    return onnx.helper.make_tensor(name, data_type, list(tensor.shape), tensor.contiguous().view(torch.uint8)
                                   .numpy().tobytes(), raw=True)


# ----------------------------------------------------------------------------- export folder
def _description(pipe, options: QuantizeOptions, export_options: ExportOptions, calibration: str,
                 calls: int) -> dict:
    """The fp32 UNet's description (weights, configs, contract) plus what the quantization depends on."""
    import modelopt

    data = describe(pipe, "unet", export_options)
    data.pop("cache_key")
    data["quantization"] = {**asdict(options), "config": quantization_config(options.precision, options.algorithm),
                            "float_layers": list(FLOAT_LAYERS), "calibration_sha256": calibration,
                            "calibration_requests": calls, "modelopt": modelopt.__version__}
    data["cache_key"] = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    return data


def _export_graph(module, calls: list[UNetCall], path: Path, options: QuantizeOptions, dynamic: bool):
    import onnx

    contract = CONTRACTS["unet"]
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, calls[0].inputs, str(path), input_names=contract.input_names,
                          output_names=contract.output_names, opset_version=OPSETS[options.precision], dynamo=False,
                          do_constant_folding=True, dynamic_axes=contract.dynamic_axes() if dynamic else None)
    model = onnx.load(str(path))
    counts = {"exported": len(model.graph.node)}
    if options.precision == "fp8":
        model = native_fp8_qdq(model)
    model = fold_weight_quantization(cleanup_toposort(model))
    counts["fold_weight_quantization"] = len(model.graph.node)
    model = fold_constants(model)  # shape subgraphs; polygraphy leaves Q/DQ nodes alone
    counts["fold_constants"] = len(model.graph.node)
    if dynamic:
        model = name_dynamic_axes(model, contract.dynamic_axes())
    return model, counts


def replace_options(options: ExportOptions, opset: int) -> ExportOptions:
    """The export options the quantized graph is written with: its opset, and no generic passes (constant
    folding would fold each weight's Q/DQ pair back into an fp32 weight)."""
    from dataclasses import replace

    return replace(options, opset=opset, passes=("cleanup_toposort", "fold_weight_quantization", "fold_constants"))


def export_quantized_unet(pipe, out_dir: str | Path, requests, precision: str = "int8",
                          options: QuantizeOptions | None = None, dynamic: bool = True,
                          force: bool = False) -> Path:
    """Write a complete export folder into ``out_dir``: the UNet quantized to ``precision`` and calibrated on
    ``requests`` (a list of PoseRequests of one grid and tile size), every other component an fp32 export.

    Returns ``out_dir``. Reused (nothing re-quantized) while the pipeline, settings and requests are the same.
    """
    options = options or QuantizeOptions(precision)
    if options.precision != precision:
        raise InvalidArgumentError(f"precision {precision!r} and options.precision {options.precision!r} differ.")
    requests = list(requests)
    if not requests:
        raise InvalidArgumentError("Calibration needs at least one request; pass 1 or more.")
    if pipe.dtype != torch.float32:
        raise InvalidArgumentError(f"Quantization calibrates against the fp32 model, but the pipeline is in "
                                   f"{pipe.dtype}; load it in fp32 (--dtype fp32): --precision sets the graph's.")
    refuse_non_folder(out_dir)
    import_modelopt()  # fail early, with the install hint, before anything is exported
    layouts = {pipe.request_layout(r) for r in requests}
    if len({(layout.rows, layout.cols, layout.padded_tile) for layout in layouts}) != 1:
        raise InvalidArgumentError("Calibration requests must share one grid and tile size (the export traces one "
                                   "shape bucket); build them with one tile_size.")
    layout = layouts.pop()
    pipe.check_tile_size((layout.tile_height, layout.tile_width), (layout.rows, layout.cols))
    bucket = ShapeBucket(1, *layout.padded_tile, layout.rows, layout.cols)
    export_options = ExportOptions(bucket=bucket, dynamic=dynamic)
    out_dir = make_output_folder(out_dir)
    others = tuple(c for c in COMPONENTS if c != "unet")
    results = export_pipeline(pipe, out_dir, export_options, others, force=force)
    description = _description(pipe, options, replace_options(export_options, OPSETS[options.precision]),
                               calibration_digest(pipe, requests, options), len(requests))
    cached = None if force else _cached(out_dir, "unet", description)
    if cached is None:
        _write_quantized_unet(pipe, out_dir, requests, options, description, dynamic)
    else:
        log.info("unet (%s): cache hit, not re-quantized", options.precision)
    manifest = {"components": {r.component: {"file": r.path.name, "sidecar": f"{r.component}.json"}
                               for r in results},
                "options": asdict(export_options), "model_config": model_config(pipe),
                "grid": [bucket.rows, bucket.cols], "quantization": description["quantization"]}
    manifest["components"]["unet"] = {"file": "unet.onnx", "sidecar": "unet.json"}
    write_json(out_dir / "manifest.json", manifest)
    return out_dir


def _write_quantized_unet(pipe, out_dir: Path, requests, options: QuantizeOptions, description: dict,
                          dynamic: bool) -> None:
    start = time.perf_counter()
    calls = record_unet_calls(pipe, requests, options.steps, options.guidance_scale)
    log.info("unet: %d calibration calls recorded in %.1f s", len(calls), time.perf_counter() - start)
    module = quantize_unet(pipe, calls, options)
    log.info("unet: quantized to %s (%s) in %.1f s", options.precision, options.algorithm,
             time.perf_counter() - start)
    with staged_export(out_dir, "unet") as staged:
        raw = staged.path("raw/unet.onnx")
        model, counts = _export_graph(module, calls, raw, options, dynamic)
        shutil.rmtree(raw.parent)
        for key in ("component", "cache_key", "versions", "options", "grid", "inputs", "outputs", "dynamic_axes",
                    "quantization"):
            model.metadata_props.add(key=f"imagpose.{key}", value=json.dumps(description[key], default=str))
        path = staged.path("unet.onnx")
        save_model(model, path, external=False)  # 8-bit weights: a full-size UNet fits under 2 GB
        infer_and_check(path)
        staged.sidecar = {**description, "file": path.name, "data_file": None,
                          "files": {path.name: file_record(path)}, "node_counts": counts,
                          "seconds": round(time.perf_counter() - start, 2)}
    log.info("unet: %s Q/DQ graph exported in %.1f s", options.precision, time.perf_counter() - start)


def quantized_runtime(pipe, work_dir: str | Path, bucket: ShapeBucket, precision: str = "int8",
                      calibration_requests: int = 4, providers=("CPUExecutionProvider",)):
    """ONNX Runtime over ``work_dir`` holding the UNet quantized to ``precision`` (calibrated on
    ``calibration_requests`` generated people at the bucket's tile size) and every other component in fp32."""
    from .runtime.onnxruntime_backend import OnnxRuntimeBackend, import_onnxruntime

    import_onnxruntime()
    requests = generated_requests(calibration_requests, (bucket.tile_height, bucket.tile_width),
                                  (bucket.rows, bucket.cols))
    export_quantized_unet(pipe, work_dir, requests, precision)
    return OnnxRuntimeBackend.for_pipeline(pipe, work_dir, providers=list(providers))
