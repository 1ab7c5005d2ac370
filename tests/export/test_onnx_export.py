import collections
import hashlib
import json

import onnx
import pytest
import torch

from imagpose import build_pipeline, scenarios
from imagpose.export import (
    COMPONENTS,
    ExportError,
    ExportOptions,
    ShapeBucket,
    export_component,
    export_pipeline,
    onnx_export,
)
from imagpose.export.parity import FP32_MIN_SQNR_DB, FP32_MIN_SSIM, component_parity, end_to_end_parity
from imagpose.export.runtime.onnxruntime_backend import OnnxRuntimeBackend
from imagpose.export.trt_check import check_onnx_for_trt, has_blockers
from tests.export.conftest import BUCKET


def test_every_component_exported_with_metadata_and_sidecar(tiny_onnx):
    out, results = tiny_onnx
    assert [r.component for r in results] == list(COMPONENTS)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["grid"] == [2, 2] and set(manifest["components"]) == set(COMPONENTS)
    for r in results:
        model = onnx.load(str(r.path), load_external_data=False)
        meta = {p.key.removeprefix("imagpose."): json.loads(p.value) for p in model.metadata_props}
        assert meta["cache_key"] == r.metadata["cache_key"]
        assert {"torch", "onnx", "imagpose"} <= set(meta["versions"])
        assert meta["options"]["opset"] == 17
        assert set(meta["configs"]) and r.node_counts["exported"] >= r.node_counts["fold_constants"]
        sidecar = json.loads((out / f"{r.component}.json").read_text())
        assert sidecar["files"] == {r.path.name: {"bytes": r.path.stat().st_size,
                                                 "sha256": hashlib.sha256(r.path.read_bytes()).hexdigest()}}
        assert model.opset_import[0].version == 17
        assert [i.name for i in model.graph.input] == list(meta["inputs"])


def test_unet_contract_axes_and_no_scatter(tiny_onnx):
    out, _ = tiny_onnx
    model = onnx.load(str(out / "unet.onnx"))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims == {"sample": ["2B", 9, "H", "W"], "timestep": ["2B"], "encoder_hidden_states": ["2B", "N", 32],
                    "pose_features": ["2B", 32, "H", "W"]}
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["ScatterND"] == 0 and ops["ScatterElements"] == 0  # CVA = reshapes/transposes
    assert ops["Transpose"] > 0 and ops["InstanceNormalization"] > 0  # opset-17 GroupNorm form


def test_second_export_reuses_and_any_change_reexports(tmp_path):
    pipe = build_pipeline("tiny", seed=1)
    options = ExportOptions(bucket=BUCKET)
    first = export_component(pipe, "flc_tokenizer", tmp_path, options)
    again = export_component(pipe, "flc_tokenizer", tmp_path, options)
    assert not first.reused and again.reused
    with torch.no_grad():
        pipe.flc_tokenizer.proj.bias[0] += 1.0  # weights changed
    changed = export_component(pipe, "flc_tokenizer", tmp_path, options)
    assert not changed.reused and changed.metadata["cache_key"] != first.metadata["cache_key"]
    opset18 = export_component(pipe, "flc_tokenizer", tmp_path, ExportOptions(opset=18, bucket=BUCKET))
    assert not opset18.reused
    assert onnx.load(str(opset18.path)).opset_import[0].version == 18
    (tmp_path / "flc_tokenizer.onnx").write_bytes(b"truncated")  # a damaged file is never reused
    assert not export_component(pipe, "flc_tokenizer", tmp_path, ExportOptions(opset=18, bucket=BUCKET)).reused


def test_failed_export_leaves_nothing_half_written(tmp_path, monkeypatch):
    pipe = build_pipeline("tiny", seed=2)
    good = export_component(pipe, "pose_guider", tmp_path, ExportOptions(bucket=BUCKET))
    before = good.path.read_bytes()

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(onnx_export, "run_passes", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        export_component(pipe, "pose_guider", tmp_path, ExportOptions(bucket=BUCKET), force=True)
    assert good.path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pose_guider.json", "pose_guider.onnx"]


def test_large_graphs_use_one_external_data_file(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)  # treat the tiny UNet as "over 2 GB"
    result = export_component(build_pipeline("tiny"), "unet", tmp_path, ExportOptions(bucket=BUCKET))
    assert result.data_path == tmp_path / "unet.onnx.data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.json", "unet.onnx", "unet.onnx.data"]
    assert result.path.stat().st_size < 2_000_000 < result.data_path.stat().st_size
    assert not has_blockers(check_onnx_for_trt(result.path))
    result.data_path.rename(tmp_path / "moved.data")
    assert any("missing" in f.message for f in check_onnx_for_trt(result.path))


def test_fp16_export_has_fp16_weights_and_fp32_timestep(tmp_path):
    result = export_component(build_pipeline("tiny"), "unet", tmp_path, ExportOptions(dtype="fp16", bucket=BUCKET))
    model = onnx.load(str(result.path))
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert types["sample"] == onnx.TensorProto.FLOAT16 and types["timestep"] == onnx.TensorProto.FLOAT
    assert not has_blockers(check_onnx_for_trt(result.path))


def test_ort_matches_torch_per_component_and_end_to_end(tiny_pipe, tiny_onnx, samples):
    """ORT fp32 vs torch fp32, SQNR >= 60 dB every component; 3-step pipeline SSIM >= 0.999."""
    out, _ = tiny_onnx
    backend = OnnxRuntimeBackend.for_pipeline(tiny_pipe, out)
    for row in component_parity(tiny_pipe, "onnxruntime", backend, BUCKET):
        print(f"{row.component:<14} max abs {row.max_abs:.2e}  SQNR {row.sqnr_db:.1f} dB")
        assert row.sqnr_db >= FP32_MIN_SQNR_DB, row
    image, pose = samples("person_red_front")
    requests = [scenarios.t2(image, pose, samples("person_red_walking")[1], tile_size=(64, 64), seed=0),
                scenarios.imagpose_star(image, pose, [samples("person_red_side")[1]], tile_size=(128, 96), seed=1)]
    e2e = end_to_end_parity(tiny_pipe, "onnxruntime", backend, requests, steps=3)
    print(f"end to end: SSIM {e2e.ssim:.6f}  PSNR {e2e.psnr_db:.1f} dB  latents {e2e.latents_max_abs:.2e}")
    assert e2e.ssim >= FP32_MIN_SSIM


def test_a_few_step_student_samples_on_ort_as_on_torch(tiny_pipe, tiny_onnx, samples):
    """A distilled student keeps the UNet's contract: its lcm sampling (one unguided UNet batch per step, fresh noise
    between steps) through the exported networks matches PyTorch as the teacher's does."""
    import copy

    from diffusers import LCMScheduler

    from imagpose.sampling_config import SamplingConfig

    out, _ = tiny_onnx
    student = copy.copy(tiny_pipe)  # the same weights, so the export is its own; a student differs only in them
    student.scheduler = LCMScheduler.from_config(tiny_pipe.scheduler.config)
    student.default_sampling = SamplingConfig(num_inference_steps=4, guidance_scale=1.0, sampler="lcm")
    backend = OnnxRuntimeBackend.for_pipeline(student, out)
    image, pose = samples("person_red_front")
    requests = [scenarios.t2(image, pose, samples("person_red_walking")[1], tile_size=(64, 64), seed=0)]
    for steps in (1, 4):
        e2e = end_to_end_parity(student, "onnxruntime", backend, requests, steps=steps)
        assert e2e.ssim >= FP32_MIN_SSIM and e2e.latents_max_abs < 1e-3, (steps, e2e)


def test_ort_backend_bad_inputs(tiny_pipe, tiny_onnx, tmp_path):
    out, _ = tiny_onnx
    with pytest.raises(ExportError, match="no manifest.json"):
        OnnxRuntimeBackend(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in out.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "vae_decoder.onnx").write_bytes(b"\x08\x01garbage")
    with pytest.raises(ExportError, match="vae_decoder.onnx"):
        OnnxRuntimeBackend(broken)
    (broken / "vae_decoder.onnx").unlink()
    with pytest.raises(ExportError, match="not found"):
        OnnxRuntimeBackend(broken)
    with pytest.raises(ExportError, match="other weights or another config"):
        OnnxRuntimeBackend.for_pipeline(build_pipeline("tiny", seed=7), out)
    backend = OnnxRuntimeBackend(out, components=("unet",))
    with pytest.raises(ExportError, match=r"bakes in the grid\(s\) \[\(2, 2\)\]"):
        backend.unet(torch.zeros(2, 9, 16, 24), torch.zeros(2), torch.zeros(2, 259, 32), torch.zeros(2, 32, 16, 24),
                     (2, 3))
    with pytest.raises(ExportError, match="providers"):
        OnnxRuntimeBackend(out, providers=["CUDAExecutionProvider"])


def test_missing_onnxruntime_names_the_extra(tiny_onnx, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"imagpose\[cpu\]"):
        OnnxRuntimeBackend(tiny_onnx[0])


def test_dynamo_exporter_for_opset_18(tmp_path):
    result = export_component(build_pipeline("tiny"), "pose_guider", tmp_path,
                              ExportOptions(opset=18, bucket=ShapeBucket(1, 64, 64, 2, 2)))
    model = onnx.load(str(result.path))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["B", 3, "PH", "PW"]


@pytest.mark.parametrize("vae_class", ["AutoencoderTiny", "AutoencoderKL"])
def test_both_autoencoder_classes_export_with_one_contract(tmp_path, vae_class):
    """The vae_encoder / vae_decoder graphs of either class have the same inputs and outputs and match PyTorch on
    ONNX Runtime; a pipeline holding a TAESD-style decoder exports like one holding SD's VAE."""
    from diffusers import AutoencoderKL

    from imagpose.pipeline import IMAGPosePipeline
    from imagpose.presets import build_components, randomize_weights

    components = build_components("tiny", seed=4)
    if vae_class == "AutoencoderKL":
        components["vae"] = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 16, 32, 32],
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
            layers_per_block=1, norm_num_groups=2, act_fn="silu", sample_size=64, scaling_factor=0.18215)
        randomize_weights(components["vae"], torch.Generator().manual_seed(5))
        components["vae"].eval()
    else:  # a from-scratch tiny one is normalised per latent channel: the graphs carry it
        components["vae"].register_to_config(latents_mean=[0.5, -1.0, 2.0, 0.0], latents_std=[0.25, 2.0, 1.0, 4.0])
    pipe = IMAGPosePipeline(**components)
    assert type(pipe.vae).__name__ == vae_class
    components = ("vae_encoder", "vae_decoder")
    for result in export_pipeline(pipe, tmp_path, ExportOptions(bucket=BUCKET), components=components):
        graph = onnx.load(str(result.path), load_external_data=False).graph
        contract = onnx_export.CONTRACTS[result.component]
        assert [i.name for i in graph.input] == contract.input_names
        assert [o.name for o in graph.output] == contract.output_names
    backend = OnnxRuntimeBackend.for_pipeline(pipe, tmp_path, components=components)
    rows = component_parity(pipe, "onnxruntime", backend, BUCKET, components=components)
    assert len(rows) == 2 and all(row.sqnr_db >= FP32_MIN_SQNR_DB for row in rows), rows
