"""INT8/FP8 UNet quantization (Model Optimizer) into a Q/DQ export folder: placement, accuracy, loading, TensorRT
check, argument errors. The tiny random-weight UNet at 64x64 tiles, calibrated on one generated person x 2 steps."""

import argparse

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from imagpose.cli import export_quantize, main
from imagpose.errors import InvalidArgumentError
from imagpose.export.parity import sqnr_db, ssim
from imagpose.export.quantize import (
    FLOAT_LAYERS,
    QuantizeOptions,
    export_quantized_unet,
    fold_weight_quantization,
    generated_requests,
    native_fp8_qdq,
    quantization_config,
    record_unet_calls,
)
from imagpose.export.runtime.onnxruntime_backend import OnnxRuntimeBackend
from imagpose.export.trt_check import check_onnx_for_trt

TILE = (64, 64)
STEPS = 2
# INT8 weights and activations of a random-weight tiny UNet against its fp32 output on the calibration inputs; an
# fp32 export reaches >= 60 dB (tests/export/test_runtime.py), a broken scale or a missing DequantizeLinear < 0 dB
MIN_INT8_SQNR_DB = 15.0
WEIGHTED_OPS = ("Conv", "MatMul", "Gemm")
FLOAT_OPS = ("LayerNormalization", "InstanceNormalization", "Softmax")  # stay in float: no DequantizeLinear input
PASS_THROUGH = ("Transpose", "Reshape", "Identity")  # between a weight's DequantizeLinear and its Conv/MatMul/Gemm


@pytest.fixture(scope="module")
def int8_folder(tmp_path_factory, tiny_pipe):
    requests = generated_requests(1, TILE)
    folder = export_quantized_unet(tiny_pipe, tmp_path_factory.mktemp("int8"), requests, "int8",
                                   QuantizeOptions("int8", steps=STEPS))
    return folder, requests


def _producers(model):
    return {out: node for node in model.graph.node for out in node.output}


def _weight_source(name, producers, initializers):
    """('int8', node) for a weight read through DequantizeLinear of an INT8 initializer, ('float', None) for a
    float initializer, None for an activation."""
    while name in producers and producers[name].op_type in PASS_THROUGH:
        name = producers[name].input[0]
    node = producers.get(name)
    if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in initializers:
        return TensorProto.DataType.Name(initializers[node.input[0]].data_type), node
    if name in initializers:
        return "float", None
    return None


def test_every_weight_is_quantized_except_the_stated_float_layers(int8_folder):
    folder, _ = int8_folder
    model = onnx.load(str(folder / "unet.onnx"))
    producers, initializers = _producers(model), {t.name: t for t in model.graph.initializer}
    quantized, in_float = [], []
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        source = next((s for s in (_weight_source(i, producers, initializers) for i in node.input[:2]) if s), None)
        if source is None:
            assert node.op_type == "MatMul", node.name  # attention Q K^T and attention x V: no weight
            continue
        layer_parts = set(node.name.replace("/", ".").split("."))
        if source[0] == "float":
            in_float.append(node.name)
            assert layer_parts & set(FLOAT_LAYERS), f"{node.name} keeps a float weight but is not in FLOAT_LAYERS"
        else:
            assert source[0] == "INT8", node.name
            assert not layer_parts & set(FLOAT_LAYERS), f"{node.name} is in FLOAT_LAYERS but quantized"
            data = node.input[0] if _weight_source(node.input[1], producers, initializers) else node.input[1]
            assert producers[data].op_type == "DequantizeLinear", f"{node.name}: its activation is not quantized"
            quantized.append(node.name)
    # tiny UNet: 49 Conv2d + 203 Linear; the float ones are conv_in, conv_out, 2 timestep-embedding Linears, 11 resnet
    # time projections and the 1x1 shortcuts of the resnets that change width
    assert len(quantized) > 200 and 13 <= len(in_float) <= 25, (len(quantized), in_float)
    for node in model.graph.node:
        if node.op_type in FLOAT_OPS:
            assert producers[node.input[0]].op_type != "DequantizeLinear", f"{node.name} reads a quantized input"
    assert {n.domain for n in model.graph.node} == {""}  # standard ONNX ops only, no TensorRT plugin


def test_onnxruntime_runs_it_near_fp32_torch_on_calibration_inputs(int8_folder, tiny_pipe):
    folder, requests = int8_folder
    calls = record_unet_calls(tiny_pipe, requests, steps=STEPS)
    session = onnxruntime.InferenceSession(str(folder / "unet.onnx"), providers=["CPUExecutionProvider"])
    reference = tiny_pipe.torch_runtime()
    for call in calls:
        feed = dict(zip(["sample", "timestep", "encoder_hidden_states", "pose_features"],
                        (t.numpy() for t in call.inputs)))
        (out,) = session.run(None, feed)
        with torch.no_grad():
            expected = reference.unet(*call.inputs, call.grid)
        assert MIN_INT8_SQNR_DB <= sqnr_db(expected, torch.from_numpy(out)) < 60, sqnr_db(expected,
                                                                                            torch.from_numpy(out))


def test_folder_loads_as_an_export_and_the_pipeline_runs_on_it(int8_folder, tiny_pipe):
    folder, requests = int8_folder
    backend = OnnxRuntimeBackend.for_pipeline(tiny_pipe, folder)  # every file's SHA-256 and the fp32 weights checked
    assert set(backend.sessions) == {"unet", "vae_encoder", "vae_decoder", "image_encoder", "pose_guider",
                                     "flc_tokenizer"}
    assert backend.sidecars["unet"]["quantization"]["precision"] == "int8"
    assert backend.sidecars["vae_decoder"].get("quantization") is None  # the other components are fp32 exports
    kwargs = dict(num_inference_steps=STEPS, output_type="pt", progress=False)
    test = tiny_pipe(requests[0], runtime=backend, **kwargs).results[0].canvas
    reference = tiny_pipe(requests[0], **kwargs).results[0].canvas
    assert torch.isfinite(test).all() and ssim(reference[None], test[None]) > 0.5

    before = (folder / "unet.onnx").stat().st_mtime_ns
    export_quantized_unet(tiny_pipe, folder, requests, "int8", QuantizeOptions("int8", steps=STEPS))
    assert (folder / "unet.onnx").stat().st_mtime_ns == before  # same pipeline, settings, requests: reused


def test_check_trt_passes(int8_folder, capsys):
    folder, _ = int8_folder
    assert check_onnx_for_trt(folder / "unet.onnx") == []
    assert main(["export", "check-trt", str(folder / "unet.onnx")]) == 0
    assert "check-trt: OK" in capsys.readouterr().out


def test_config_quantizes_linear_and_conv_and_keeps_float_layers_off():
    config = quantization_config("int8")
    entries = config["quant_cfg"]
    assert entries[0] == {"quantizer_name": "*", "enable": False} and config["algorithm"] == "max"
    weights = [e for e in entries if e.get("cfg") and e["quantizer_name"] == "*weight_quantizer"]
    assert {e["parent_class"] for e in weights} == {"nn.Linear", "nn.Conv2d"}
    assert all(e["cfg"] == {"num_bits": 8, "axis": 0} for e in weights)  # per output channel
    disabled = {e["quantizer_name"] for e in entries if e.get("enable") is False}
    assert all(f"*.{name}.*" in disabled for name in FLOAT_LAYERS)
    fp8 = quantization_config("fp8")
    assert {e["cfg"]["num_bits"] for e in fp8["quant_cfg"] if "cfg" in e} == {(4, 3)}
    smooth = quantization_config("int8", "smoothquant")
    assert smooth["algorithm"] == {"method": "smoothquant", "alpha": 0.8}


def test_bad_arguments_are_clear_errors(tiny_pipe, tmp_path):
    with pytest.raises(InvalidArgumentError, match="precision must be one of int8, fp8, got 'int4'"):
        QuantizeOptions("int4")
    with pytest.raises(InvalidArgumentError, match="SmoothQuant is an INT8 recipe"):
        QuantizeOptions("fp8", "smoothquant")
    with pytest.raises(InvalidArgumentError, match="at least one request, got 0"):
        generated_requests(0, TILE)
    with pytest.raises(InvalidArgumentError, match="at least one request"):
        export_quantized_unet(tiny_pipe, tmp_path / "out", [], "int8")
    assert not (tmp_path / "out").exists()

    parser = argparse.ArgumentParser()
    export_quantize.add_parser(parser.add_subparsers())
    for argv in (["--precision", "int4"], ["--calib-requests", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(["quantize", "--out", str(tmp_path), *argv])
        assert exit_info.value.code == 2


def test_fp8_passes_give_native_qdq_with_fp8_weights(tmp_path):
    """Precondition: a Conv whose weight goes through Model Optimizer's trt::TRT_FP8 Q/DQ ops, as its exporter writes
    them. Under test: native_fp8_qdq then fold_weight_quantization."""
    weight = np.random.default_rng(0).standard_normal((4, 4, 3, 3)).astype(np.float32)
    scale = numpy_helper.from_array(np.array(np.abs(weight).max() / 448.0, np.float32), "scale")
    nodes = [helper.make_node("TRT_FP8QuantizeLinear", ["w", "scale"], ["wq"], domain="trt"),
             helper.make_node("TRT_FP8DequantizeLinear", ["wq", "scale"], ["wdq"], domain="trt"),
             helper.make_node("Conv", ["x", "wdq"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [numpy_helper.from_array(weight, "w"), scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("trt", 1)])

    model = fold_weight_quantization(native_fp8_qdq(model))
    onnx.checker.check_model(model)
    assert [(n.domain, n.op_type) for n in model.graph.node] == [("", "DequantizeLinear"), ("", "Conv")]
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 19)]
    stored = {t.name: t for t in model.graph.initializer}[model.graph.node[0].input[0]]
    assert stored.data_type == TensorProto.FLOAT8E4M3FN
    path = tmp_path / "fp8.onnx"
    onnx.save(model, str(path))
    assert check_onnx_for_trt(path) == []
    # the stored weight is the weight in E4M3 (3 mantissa bits: relative error <= 2^-4)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    (out,) = session.run(None, {"x": x})
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weight), padding=1)
    assert sqnr_db(expected, torch.from_numpy(out)) > 25
