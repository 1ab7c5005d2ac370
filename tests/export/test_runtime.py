"""prepare_runtime (export, build, load and check in one call), the component -> Runtime method table, the
backend names the command line accepts, and the fast-path parity moved out of the CLI."""

import argparse
import importlib.util
from dataclasses import replace

import pytest
import torch

from imagpose.cli import main
from imagpose.cli.common import resolve_runtime
from imagpose.errors import InvalidArgumentError, MissingDependencyError
from imagpose.export import COMPONENTS, CONTRACTS, axis_values, model_config
from imagpose.export.components import ComponentModule, call_runtime
from imagpose.export.parity import fast_path_parity
from imagpose.export.runtime import prepare_runtime, runtime_folders
from imagpose.export.runtime.base import ExportedRuntime
from imagpose.export.runtime.onnxruntime_backend import OnnxRuntimeBackend
from imagpose.runtime import RUNTIME_METHODS, Runtime
from tests.export.conftest import BUCKET

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _cached_files(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name != "manifest.json"}


@torch.no_grad()
def test_one_table_maps_components_to_runtime_methods(tiny_pipe):
    protocol = {name for name, value in vars(Runtime).items() if not name.startswith("_") and callable(value)}
    assert tuple(RUNTIME_METHODS) == COMPONENTS and set(RUNTIME_METHODS.values()) == protocol

    class Recorder(ExportedRuntime):
        def _run(self, component, *inputs):
            called.append(component)
            return inputs[0]

        def supported_grids(self):
            return set()

    called, torch_runtime = [], tiny_pipe.torch_runtime()
    for component in COMPONENTS:
        shape_bucket = BUCKET if component == "unet" else replace(BUCKET, cfg=False)
        inputs = CONTRACTS[component].sample_inputs(axis_values(shape_bucket, model_config(tiny_pipe)))
        call_runtime(Recorder(), component, inputs, (2, 2))
        exported_form = ComponentModule(tiny_pipe, component, (2, 2))(*inputs)
        assert torch.equal(exported_form, call_runtime(torch_runtime, component, inputs, (2, 2))), component
    assert called == list(COMPONENTS)


def test_prepare_runtime_reuses_the_export_and_checks_the_pipeline(tiny_pipe, tiny_onnx):
    onnx_dir, _ = tiny_onnx
    work_dir = onnx_dir.parent.parent
    assert runtime_folders(work_dir, "fp32")[0] == onnx_dir
    before = _cached_files(onnx_dir)
    runtime = prepare_runtime("onnxruntime", tiny_pipe, work_dir, BUCKET)
    assert isinstance(runtime, OnnxRuntimeBackend) and _cached_files(onnx_dir) == before  # a cache hit
    assert prepare_runtime("torch", tiny_pipe, work_dir, BUCKET).name == "torch"
    with pytest.raises(InvalidArgumentError, match="'bogus'; choose from torch, onnxruntime, tensorrt"):
        prepare_runtime("bogus", tiny_pipe, work_dir, BUCKET)

    args = argparse.Namespace(runtime="onnxruntime", work_dir=str(work_dir), model=None, preset="tiny", dtype="fp32")
    assert isinstance(resolve_runtime(tiny_pipe, args), OnnxRuntimeBackend) and _cached_files(onnx_dir) == before
    assert resolve_runtime(tiny_pipe, argparse.Namespace(runtime="torch")) is None
    with pytest.raises(InvalidArgumentError, match="fp32 or fp16"):
        resolve_runtime(tiny_pipe, argparse.Namespace(**{**vars(args), "dtype": "bf16"}))


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_prepare_runtime_tensorrt_without_tensorrt_writes_nothing(tiny_pipe, tmp_path):
    with pytest.raises(MissingDependencyError, match=r"imagpose\[trt\]"):
        prepare_runtime("tensorrt", tiny_pipe, tmp_path, BUCKET, dtype="fp16")
    assert not any(tmp_path.iterdir())


def test_parity_cli_names_the_valid_runtimes(capsys):
    assert main(["parity", "--runtimes", "torch,bogus"]) == 2
    err = capsys.readouterr().err
    assert "unknown runtime(s) bogus; choose from torch, onnxruntime, tensorrt" in err, err
    assert "Traceback" not in err


def test_parity_cli_and_fast_path_parity_run_in_the_given_work_dir(tiny_onnx, capsys):
    onnx_dir, _ = tiny_onnx
    work_dir, before = onnx_dir.parent.parent, _cached_files(onnx_dir)
    assert main(["parity", "--runtimes", "onnxruntime", "--work-dir", str(work_dir), "--steps", "1"]) == 0
    assert "PASS" in capsys.readouterr().out

    result = fast_path_parity(["eager", "onnxruntime"], "cpu", work_dir, steps=1)
    (row,) = result["rows"]
    assert row["backend"] == "onnxruntime" and len(row["sqnr_db_per_step"]) == 1 and row["final_ssim"] > 0.999
    assert _cached_files(onnx_dir) == before  # same tiny weights: both reused the export
