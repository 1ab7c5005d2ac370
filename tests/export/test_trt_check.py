"""check-trt on hand-made graphs: each case is one node TensorRT's parser rejects or mishandles."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from imagpose.cli import main
from imagpose.errors import InvalidArgumentError
from imagpose.export import trt_check
from imagpose.export.trt_check import check_onnx_for_trt, has_blockers


def _save(tmp_path, nodes, opset=17, inputs=None, outputs=None, initializers=(), domain_opsets=(), name="m"):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domain_opsets]
    model = helper.make_model(graph, opset_imports=opsets)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def test_clean_graph_passes(tmp_path):
    path = _save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])])
    assert check_onnx_for_trt(path) == []


@pytest.mark.parametrize("case, expect", [
    ("unsupported_op", "listed as unsupported"),
    ("unknown_op", "not in TensorRT"),
    ("groupnorm_21", "opset-21 GroupNormalization"),
    ("custom_domain", "custom op"),
    ("opset_too_new", "outside TensorRT"),
    ("axes_not_initializer", "`axes` must be an initializer"),
    ("resize_cubic", "Resize mode 'cubic'"),
])
def test_blockers(tmp_path, case, expect):
    x = "x"
    if case == "unsupported_op":
        path = _save(tmp_path, [helper.make_node("Unique", [x], ["y"])])
    elif case == "unknown_op":
        path = _save(tmp_path, [helper.make_node("NotARealOp", [x], ["y"])])
    elif case == "groupnorm_21":
        scale = numpy_helper.from_array(np.ones(4, np.float32), "s")
        bias = numpy_helper.from_array(np.zeros(4, np.float32), "b")
        path = _save(tmp_path, [helper.make_node("GroupNormalization", [x, "s", "b"], ["y"], num_groups=2)],
                     opset=21, initializers=[scale, bias])
        findings = check_onnx_for_trt(path, "10.1")
        assert any("opset 21 is outside" in f.message for f in findings)
    elif case == "custom_domain":
        path = _save(tmp_path, [helper.make_node("flash_fwd", [x], ["y"], domain="xformers_flash")],
                     domain_opsets=["xformers_flash"])
    elif case == "opset_too_new":
        path = _save(tmp_path, [helper.make_node("Relu", [x], ["y"])], opset=22)
    elif case == "axes_not_initializer":
        axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
        path = _save(tmp_path, [helper.make_node("Unsqueeze", [x, "axes"], ["y"])], opset=13,
                     inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]), axes])
    elif case == "resize_cubic":
        scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
        path = _save(tmp_path, [helper.make_node("Resize", [x, "", "scales"], ["y"], mode="cubic")],
                     initializers=[scales])
    findings = check_onnx_for_trt(path, "10.1")
    print("\n".join(f.format() for f in findings))
    assert has_blockers(findings)
    assert any(expect in f.message for f in findings if f.severity == "blocker"), findings


def test_dtypes_depend_on_the_named_version(tmp_path):
    inputs = [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [4])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [4])]
    path = _save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], inputs=inputs, outputs=outputs)
    assert not has_blockers(check_onnx_for_trt(path, "10.1"))
    assert any("BFLOAT16" in f.message for f in check_onnx_for_trt(path, "8.6") if f.severity == "blocker")


def test_scatternd_is_a_warning(tmp_path):
    idx = numpy_helper.from_array(np.zeros((1, 1), np.int64), "i")
    upd = numpy_helper.from_array(np.zeros((1, 4, 8, 8), np.float32), "u")
    path = _save(tmp_path, [helper.make_node("ScatterND", ["x", "i", "u"], ["y"])], initializers=[idx, upd])
    findings = check_onnx_for_trt(path)
    assert not has_blockers(findings) and any(f.op == "ScatterND" for f in findings)


def test_oversized_inline_file_and_unreadable_files(tmp_path, monkeypatch):
    path = _save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])])
    monkeypatch.setattr(trt_check, "PROTOBUF_LIMIT", 10)  # pretend the tiny file is over 2 GB
    assert any("without external data" in f.message for f in check_onnx_for_trt(path))
    monkeypatch.undo()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx at all")
    assert has_blockers(check_onnx_for_trt(bad))
    assert has_blockers(check_onnx_for_trt(tmp_path / "missing.onnx"))
    with pytest.raises(InvalidArgumentError, match="No TensorRT support table"):
        check_onnx_for_trt(path, "7.0")


@pytest.mark.parametrize("case, expect", [
    ("empty", "is empty (0 bytes)"),
    ("header_only", "holds no ONNX graph"),  # a protobuf with an IR version and nothing else
    ("text", "not a readable ONNX file"),
    ("folder", "is a folder, not an ONNX file"),
    ("missing", "file not found"),
])
def test_what_is_not_an_onnx_model_is_a_blocker(tmp_path, capsys, case, expect):
    path = tmp_path / f"{case}.onnx"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "header_only":
        path.write_bytes(b"\x08\x07")
    elif case == "text":
        path.write_text("hello world, this is text\n")
    elif case == "folder":
        path.mkdir()
    findings = check_onnx_for_trt(path)
    assert has_blockers(findings) and expect in findings[0].message, findings
    assert main(["export", "check-trt", str(path)]) == 1
    out = capsys.readouterr().out
    assert "check-trt: FAIL" in out and expect in out, out


def test_cli_exit_codes(tmp_path, tiny_onnx):
    good = tiny_onnx[0] / "unet.onnx"
    proc = subprocess.run([sys.executable, "-m", "imagpose", "export", "check-trt", str(good)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bad = _save(tmp_path, [helper.make_node("Unique", ["x"], ["y"])])
    proc = subprocess.run([sys.executable, "-m", "imagpose", "export", "check-trt", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "BLOCKER" in proc.stdout
