"""Static TensorRT-compatibility check of an ONNX file, runnable without TensorRT.

Reports every node TensorRT's ONNX parser (onnx-tensorrt) would reject or mishandle, from the parser's
published operator support matrix for a named TensorRT version (``data/trt_onnx_support.json``: 8.6 and
10.1, transcribed from onnx/onnx-tensorrt ``docs/operators.md`` at the ``release/*-GA`` tags), plus the
known traps for SD-class UNets:
    - ops missing from the parser, or listed as unsupported                          -> blocker
    - default-domain opset outside the version's range                                -> blocker
    - custom domains (xformers, com.microsoft contrib ops, ...) without a plugin        -> blocker
    - GroupNormalization in its opset-21 form (per-channel scale; the parser has the 18 form) -> blocker
    - tensor types TensorRT does not have (e.g. BF16 before 10, DOUBLE cast down)       -> blocker / warning
    - a file over 2 GB that stores its weights inline (protobuf limit)                  -> blocker
    - restrictions the parser states: `axes` of Slice/Squeeze/Unsqueeze/Pad as initialisers, Resize modes
    - ScatterND (zeros + slice-assignment patterns; slow in TensorRT)                   -> warning
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from imagpose.errors import InvalidArgumentError

SUPPORT_FILE = Path(__file__).with_name("data") / "trt_onnx_support.json"
DEFAULT_TRT_VERSION = "10.1"
PROTOBUF_LIMIT = 2**31 - 1

# ONNX TensorProto data type -> the name used by the support matrix
_ONNX_TYPE_NAMES = {1: "FLOAT32", 2: "UINT8", 3: "INT8", 5: "INT16", 6: "INT32", 7: "INT64", 9: "BOOL",
                    10: "FLOAT16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64", 16: "BFLOAT16", 17: "FP8",
                    18: "FP8", 19: "FP8", 20: "FP8", 22: "INT4"}
_CAST_DOWN = {"DOUBLE": "FLOAT32", "INT64": "INT32"}
_AXES_AS_INPUT = {"Slice": 3, "Squeeze": 1, "Unsqueeze": 1, "Pad": 3}  # input index of `axes`


@dataclass(frozen=True)
class Finding:
    severity: str  # "blocker" or "warning"
    op: str
    node: str
    message: str

    def format(self) -> str:
        return f"{self.severity.upper():8} {self.op:<22} {self.node or '-':<48} {self.message}"


@lru_cache
def support_table(version: str) -> dict:
    tables = json.loads(SUPPORT_FILE.read_text())
    if version not in tables:
        raise InvalidArgumentError(f"No TensorRT support table for {version!r}; known: {', '.join(sorted(tables))}.")
    return tables[version]


def check_onnx_for_trt(path: str | Path, trt_version: str = DEFAULT_TRT_VERSION) -> list[Finding]:
    """All findings for ``path``; the file's weights are not loaded."""
    import onnx

    table = support_table(trt_version)
    path = Path(path)
    if path.is_dir():
        return [Finding("blocker", "-", "", f"{path} is a folder, not an ONNX file")]
    if not path.is_file():
        return [Finding("blocker", "-", "", f"file not found: {path}")]
    if path.stat().st_size == 0:
        return [Finding("blocker", "-", "", f"{path} is empty (0 bytes), not an ONNX model")]
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError and friends for corrupt files
        return [Finding("blocker", "-", "", f"not a readable ONNX file ({exc})")]
    if not model.opset_import or not model.graph.node:  # protobuf parses many non-ONNX byte strings as empty models
        return [Finding("blocker", "-", "", f"{path} holds no ONNX graph (no opset or no nodes), not an ONNX model")]
    findings: list[Finding] = []
    findings += _check_size(model, path)
    findings += _check_opsets(model, table, trt_version)
    initializers = {t.name for t in model.graph.initializer}
    constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    for node in model.graph.node:
        findings += _check_node(node, table, trt_version, initializers | constants, opset)
    findings += _check_types(model, table, trt_version)
    return findings


def _check_size(model, path: Path) -> list[Finding]:
    external = any(t.data_location == 1 for t in model.graph.initializer)
    if path.stat().st_size > PROTOBUF_LIMIT and not external:
        return [Finding("blocker", "-", "", "file is over 2 GB without external data; re-export (imagpose stores "
                        "large graphs' weights in one <name>.onnx.data file)")]
    if external:
        missing = sorted({e.value for t in model.graph.initializer for e in t.external_data
                          if e.key == "location" and not (path.parent / e.value).is_file()})
        if missing:
            return [Finding("blocker", "-", "", f"external data file(s) {missing} missing next to {path.name}")]
    return []


def _check_opsets(model, table, version) -> list[Finding]:
    findings = []
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            if not table["min_opset"] <= opset.version <= table["max_opset"]:
                findings.append(Finding("blocker", "-", "", f"opset {opset.version} is outside TensorRT {version}'s "
                                        f"range {table['min_opset']}..{table['max_opset']}"))
        elif opset.domain != "ai.onnx.ml":
            findings.append(Finding("blocker", "-", "", f"custom op domain {opset.domain!r} needs a TensorRT plugin"))
    return findings


def _check_node(node, table, version, constant_names, opset) -> list[Finding]:
    ops = table["operators"]
    if node.domain not in ("", "ai.onnx"):
        return [Finding("blocker", node.op_type, node.name, f"custom op of domain {node.domain!r} (no plugin)")]
    entry = ops.get(node.op_type)
    if entry is None:
        return [Finding("blocker", node.op_type, node.name, f"not in TensorRT {version}'s ONNX parser")]
    if not entry["supported"]:
        return [Finding("blocker", node.op_type, node.name, f"listed as unsupported by TensorRT {version}")]
    findings = []
    if entry.get("experimental"):
        findings.append(Finding("warning", node.op_type, node.name, "experimental support"))
    if node.op_type == "GroupNormalization" and opset >= 21:
        findings.append(Finding("blocker", node.op_type, node.name, "opset-21 GroupNormalization (per-channel scale) "
                                "is not parsed (TensorRT implements the opset-18 form); export with opset 17 "
                                "(InstanceNorm form) or 18-20"))
    if node.op_type in _AXES_AS_INPUT:
        index = _AXES_AS_INPUT[node.op_type]
        if len(node.input) > index and node.input[index] and node.input[index] not in constant_names:
            findings.append(Finding("blocker", node.op_type, node.name, "`axes` must be an initializer"))
    if node.op_type == "Resize":
        attrs = {a.name: a for a in node.attribute}
        mode = attrs["mode"].s.decode() if "mode" in attrs else "nearest"
        if mode not in ("nearest", "linear"):
            findings.append(Finding("blocker", node.op_type, node.name, f"Resize mode {mode!r} is not supported"))
        if "antialias" in attrs and attrs["antialias"].i:
            findings.append(Finding("blocker", node.op_type, node.name, "antialiasing Resize is not supported"))
    if node.op_type == "ScatterND":
        findings.append(Finding("warning", node.op_type, node.name, "ScatterND (slice assignment into a zeros tensor?) "
                                "runs as a slow scatter; prefer reshape/transpose"))
    return findings


def _check_types(model, table, version) -> list[Finding]:
    supported = set(table["dtypes"])
    tensors = [(v.name, v.type.tensor_type.elem_type) for v in
               list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)]
    tensors += [(t.name, t.data_type) for t in model.graph.initializer]
    findings, seen = [], set()
    for name, elem in tensors:
        type_name = _ONNX_TYPE_NAMES.get(elem, f"type{elem}")
        if elem == 0 or type_name in seen:
            continue
        if type_name not in supported:
            seen.add(type_name)
            if type_name in _CAST_DOWN:
                findings.append(Finding("warning", "-", name, f"{type_name} tensors are cast down to "
                                        f"{_CAST_DOWN[type_name]} by TensorRT {version}"))
            else:
                findings.append(Finding("blocker", "-", name, f"{type_name} tensors are not supported by TensorRT "
                                        f"{version}"))
        elif type_name == "DOUBLE":
            seen.add(type_name)
            findings.append(Finding("warning", "-", name, "DOUBLE tensors are cast down to FLOAT32 (clamped)"))
    return findings


def has_blockers(findings: list[Finding]) -> bool:
    return any(f.severity == "blocker" for f in findings)
