"""Full-size (SD1.5-size, random weights) UNet with all 21 CVA modules: ONNX with external data, check-trt,
ONNX Runtime parity. Minutes and ~12 GB of RAM on CPU: slow tier (`make test-slow`)."""

import gc
import json
import time

import onnx
import pytest
import torch

from imagpose.export import ExportOptions, ShapeBucket, axis_values, export_component, model_config
from imagpose.export.components import CONTRACTS
from imagpose.export.parity import sqnr_db
from imagpose.export.trt_check import check_onnx_for_trt, has_blockers
from imagpose.presets import build_pipeline

pytestmark = pytest.mark.slow


def test_sd15_unet_onnx_external_data_check_trt_and_ort_parity(tmp_path):
    bucket = ShapeBucket(1, 256, 256, 2, 2)  # canvas 512x512 -> latent 64x64, CFG batch 2
    pipe = build_pipeline("sd15", seed=0)
    assert len(pipe.unet.cva_modules()) == 21
    inputs = CONTRACTS["unet"].sample_inputs(axis_values(bucket, model_config(pipe)))
    with torch.no_grad():
        reference = pipe.torch_runtime().unet(*inputs, (2, 2))
    start = time.perf_counter()
    result = export_component(pipe, "unet", tmp_path, ExportOptions(bucket=bucket))
    export_seconds = time.perf_counter() - start
    del pipe
    gc.collect()

    assert result.data_path is not None and result.data_path.name == "unet.onnx.data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.json", "unet.onnx", "unet.onnx.data"]
    findings = check_onnx_for_trt(result.path)
    assert not has_blockers(findings), [f.format() for f in findings]
    structure = onnx.load(str(result.path), load_external_data=False)
    assert not any(n.op_type == "ScatterND" for n in structure.graph.node)

    import onnxruntime as ort

    start = time.perf_counter()
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    load_seconds = time.perf_counter() - start
    feed = {name: t.numpy() for name, t in zip(CONTRACTS["unet"].input_names, inputs)}
    start = time.perf_counter()
    (out,) = session.run(None, feed)
    run_seconds = time.perf_counter() - start
    sqnr = sqnr_db(reference, torch.from_numpy(out))
    numbers = {"onnx_bytes": result.path.stat().st_size, "data_bytes": result.data_path.stat().st_size,
               "export_s": round(export_seconds, 1), "ort_load_s": round(load_seconds, 1),
               "ort_forward_s": round(run_seconds, 1), "sqnr_db": round(sqnr, 1),
               "max_abs": float((reference - torch.from_numpy(out)).abs().max()),
               "node_counts": result.node_counts, "warnings": len(findings)}
    print(json.dumps(numbers, indent=1))
    assert sqnr >= 60.0
