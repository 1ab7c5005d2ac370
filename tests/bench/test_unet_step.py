"""pytest-benchmark: one UNet call (a CFG denoising step, batch 2) on torch vs ONNX Runtime, CPU.

    make bench            # pytest tests/bench -m bench --benchmark-json=outputs/bench/pytest_benchmark.json
                          # then scripts/bench_summary.py prints medians and the torch/ORT ratio
Timing is pytest-benchmark's (warm-up round, several rounds, median); no test here asserts a time.
"""

import json

import pytest
import torch

from imagpose.export import ExportOptions, ShapeBucket, axis_values, export_component, model_config
from imagpose.export.components import CONTRACTS
from imagpose.export.runtime.onnxruntime_backend import OnnxRuntimeBackend
from imagpose.presets import build_pipeline

pytestmark = pytest.mark.bench

CASES = {"tiny": ShapeBucket(1, 256, 176, 2, 2), "mid": ShapeBucket(1, 256, 256, 2, 2)}
_cache = {}


def _setup(preset, tmp_path_factory):
    if preset not in _cache:
        pipe = build_pipeline(preset)
        bucket = CASES[preset]
        out = tmp_path_factory.mktemp(f"bench_{preset}")
        export_component(pipe, "unet", out, ExportOptions(bucket=bucket))
        manifest = {"components": {"unet": {"file": "unet.onnx"}}, "grid": [bucket.rows, bucket.cols]}
        (out / "manifest.json").write_text(json.dumps(manifest))
        inputs = CONTRACTS["unet"].sample_inputs(axis_values(bucket, model_config(pipe)))
        _cache[preset] = (pipe, OnnxRuntimeBackend(out, components=("unet",)), inputs, bucket)
    return _cache[preset]


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("preset", list(CASES))
def test_unet_step(benchmark, preset, backend, tmp_path_factory):
    pipe, ort_backend, inputs, bucket = _setup(preset, tmp_path_factory)
    runtime = pipe.torch_runtime() if backend == "torch" else ort_backend
    grid = (bucket.rows, bucket.cols)
    benchmark.group = f"unet-step-{preset}"
    benchmark.extra_info.update(preset=preset, backend=backend, sample_shape=list(inputs[0].shape),
                                threads=torch.get_num_threads(), device="cpu")
    with torch.no_grad():
        out = benchmark.pedantic(runtime.unet, args=(*inputs, grid), rounds=5, warmup_rounds=1, iterations=1)
    assert out.shape == (inputs[0].shape[0], 4, *inputs[0].shape[2:])
