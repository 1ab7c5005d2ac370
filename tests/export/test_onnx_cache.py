"""The ONNX export cache: a file changed after export is never used, and a cache hit does not re-hash the torch
weights."""

import os

import onnx
import pytest
import torch

from imagpose import build_pipeline
from imagpose.export import ExportError, ExportOptions, export_component, export_pipeline, onnx_export
from imagpose.export.onnx_export import fingerprint
from imagpose.export.runtime.onnxruntime_backend import OnnxRuntimeBackend
from tests.export.conftest import BUCKET


def flip_bytes(path, offset: int) -> None:
    """Invert 4 bytes of ``path`` at ``offset`` in place, keeping the file's size, inode and mtime."""
    before = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(offset)
        original = handle.read(4)
        handle.seek(offset)
        handle.write(bytes(b ^ 0xFF for b in original))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)


def flip_initializer_bytes(onnx_path, data_path=None) -> None:
    """Invert 4 bytes inside the largest initializer's payload (in the graph file or its external data)."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    if data_path is None:
        largest = max(model.graph.initializer, key=lambda t: len(t.raw_data))
        flip_bytes(onnx_path, onnx_path.read_bytes().index(largest.raw_data) + 16)
    else:
        locations = [{e.key: e.value for e in t.external_data} for t in model.graph.initializer if t.external_data]
        largest = max(locations, key=lambda e: int(e["length"]))
        flip_bytes(data_path, int(largest["offset"]) + 16)


def test_tampered_onnx_is_reexported_and_refused_by_the_runtime(tiny_pipe, tmp_path):
    options = ExportOptions(bucket=BUCKET)
    (first,) = export_pipeline(tiny_pipe, tmp_path, options, components=("flc_tokenizer",))
    written = first.path.read_bytes()
    flip_initializer_bytes(first.path)
    with pytest.raises(ExportError, match=r"flc_tokenizer.onnx changed since it was written"):
        OnnxRuntimeBackend.for_pipeline(tiny_pipe, tmp_path, components=("flc_tokenizer",))
    again = export_component(tiny_pipe, "flc_tokenizer", tmp_path, options)
    assert not again.reused and again.path.read_bytes() == written
    OnnxRuntimeBackend.for_pipeline(tiny_pipe, tmp_path, components=("flc_tokenizer",))  # the re-export is trusted


def test_tampered_external_data_is_reexported(tiny_pipe, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)  # weights in pose_guider.onnx.data
    options = ExportOptions(bucket=BUCKET)
    first = export_component(tiny_pipe, "pose_guider", tmp_path, options)
    assert first.data_path is not None
    assert export_component(tiny_pipe, "pose_guider", tmp_path, options).reused
    flip_initializer_bytes(first.path, first.data_path)
    assert not export_component(tiny_pipe, "pose_guider", tmp_path, options).reused


def test_weights_digest_is_remembered_until_a_weight_changes(monkeypatch, tmp_path):
    from imagpose.export import digests

    pipe = build_pipeline("tiny", seed=5)
    hashed = []
    hash_state_dict = digests.hash_state_dict
    monkeypatch.setattr(digests, "hash_state_dict", lambda module: hashed.append(module) or hash_state_dict(module))
    first = fingerprint(pipe, "flc_tokenizer")["weights"]
    assert fingerprint(pipe, "flc_tokenizer")["weights"] == first and len(hashed) == 1
    export_component(pipe, "flc_tokenizer", tmp_path, ExportOptions(bucket=BUCKET))
    assert export_component(pipe, "flc_tokenizer", tmp_path, ExportOptions(bucket=BUCKET)).reused
    assert len(hashed) == 1  # neither the export nor its cache hit hashed the weights again

    proj = pipe.flc_tokenizer.proj
    saved = {k: v.clone() for k, v in pipe.flc_tokenizer.state_dict().items()}
    with torch.no_grad():
        proj.bias[0] += 1.0  # in place: the version counter moves
    assert fingerprint(pipe, "flc_tokenizer")["weights"] != first
    pipe.flc_tokenizer.load_state_dict(saved)
    assert fingerprint(pipe, "flc_tokenizer")["weights"] == first
    proj.weight = torch.nn.Parameter(proj.weight.detach() * 2)  # a new tensor
    assert fingerprint(pipe, "flc_tokenizer")["weights"] != first
    assert not export_component(pipe, "flc_tokenizer", tmp_path, ExportOptions(bucket=BUCKET)).reused


def test_saving_the_pipeline_does_not_invalidate_its_exports(tmp_path):
    """Regression: transformers' save_pretrained writes "dtype" and "architectures" into the image encoder's live
    config, which made every export of a saved pipeline (and of the same preset built afresh) a cache miss."""
    pipe = build_pipeline("tiny", seed=0)
    first = export_component(pipe, "image_encoder", tmp_path / "onnx")
    pipe.save_pretrained(tmp_path / "saved")
    assert export_component(pipe, "image_encoder", tmp_path / "onnx").reused
    assert export_component(build_pipeline("tiny", seed=0), "image_encoder", tmp_path / "onnx").reused
    assert not first.reused
