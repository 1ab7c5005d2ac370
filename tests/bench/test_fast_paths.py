"""The benchmark's fast paths (bench/fast_paths.py): the ONNX Runtime path runs the benchmark's pipeline call,
and every file it exports goes under the work folder it is given, nothing into the current directory (the
parity section's exports are imagpose.export.parity.fast_path_parity's, tested with it)."""

from dataclasses import replace

import torch

from imagpose.bench.fast_paths import backend_factories
from imagpose.bench.imagpose_method import RELEASED, IMAGPoseMethod
from imagpose.bench.meter import Meter

SETTING = replace(RELEASED, resolution=(64, 64), steps=2, precision="fp32")


def test_onnxruntime_path_writes_only_under_the_work_dir(tmp_path, monkeypatch, one_thread):
    cwd, work = tmp_path / "cwd", tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    method = IMAGPoseMethod("tiny").eval()
    inputs = method.example_inputs(1, SETTING)
    reference = method.generate(inputs, SETTING, Meter())
    method.backend = backend_factories(["onnxruntime", "eager"], work)["onnxruntime"](method, SETTING)
    images = method.generate(inputs, SETTING, Meter())
    print("max |onnxruntime - torch|:", (images - reference).abs().max().item())
    assert method.backend.name == "onnxruntime"
    assert torch.allclose(images, reference, atol=1e-3)
    assert list(cwd.iterdir()) == []
    assert [path.relative_to(work).parts[:3] for path in work.rglob("unet.onnx")] == [
        ("onnxruntime", "tiny", "b1_64x64_2x2")]
