"""DeepCache and the guidance interval on exported graphs: the DeepCache UNet pair of a branch is exported only when
asked, ONNX Runtime matches PyTorch graph by graph and end to end, and a branch that was not exported is an error
naming the fix."""

import json
import shutil

import onnx
import pytest
import torch

from imagpose import scenarios
from imagpose.errors import InvalidArgumentError
from imagpose.export import CONTRACTS, ExportError, ExportOptions, axis_values, export_component, export_pipeline
from imagpose.export.components import call_runtime, model_config
from imagpose.export.parity import FP32_MIN_SQNR_DB, FP32_MIN_SSIM, sqnr_db, ssim
from imagpose.export.runtime import prepare_runtime, runtime_folders
from imagpose.export.runtime.onnxruntime_backend import OnnxRuntimeBackend
from imagpose.sdk import IMAGPoseGenerator
from tests.export.conftest import BUCKET

BRANCH = 1


@pytest.fixture(scope="module")
def deepcache_onnx(tiny_onnx, tmp_path_factory):
    """The tiny export plus the DeepCache pair of branch 1, in a folder of its own (the six components are copied,
    so they are reused)."""
    onnx_dir, _ = runtime_folders(tmp_path_factory.mktemp("deepcache"), "fp32")
    shutil.copytree(tiny_onnx[0], onnx_dir)
    return onnx_dir


def test_the_deepcache_pair_is_exported_only_when_asked(tiny_pipe, tiny_onnx, deepcache_onnx):
    assert not any("deepcache" in name for name in json.loads((tiny_onnx[0] / "manifest.json").read_text())
                   ["components"])
    results = export_pipeline(tiny_pipe, deepcache_onnx, ExportOptions(bucket=BUCKET, deepcache_branches=(BRANCH,)))
    exported = {r.component: r.reused for r in results}
    assert exported == {"unet": True, "vae_encoder": True, "vae_decoder": True, "image_encoder": True,
                        "pose_guider": True, "flc_tokenizer": True,  # the same keys as before: reused
                        "unet_deepcache_full_b1": False, "unet_deepcache_shallow_b1": False}
    assert set(json.loads((deepcache_onnx / "manifest.json").read_text())["components"]) == set(exported)

    def dims(values):
        return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    full = onnx.load(str(deepcache_onnx / "unet_deepcache_full_b1.onnx")).graph
    shallow = onnx.load(str(deepcache_onnx / "unet_deepcache_shallow_b1.onnx")).graph
    feature = ["2B", 32, "H", "W"]  # branch 1 of the tiny UNet: 32 channels at the latent resolution (HF1 = H)
    assert dims(full.output) == {"prediction": ["2B", 4, "H", "W"], "deep_feature": feature}
    assert dims(shallow.input)["deep_feature"][:2] == feature[:2] and list(dims(shallow.output)) == ["prediction"]
    assert all(isinstance(d, str) for d in dims(shallow.input)["deep_feature"][2:])  # dynamic: any canvas size


@torch.no_grad()
def test_onnx_runtime_runs_deepcache_and_guidance_intervals_as_torch(tiny_pipe, deepcache_onnx, samples):
    export_pipeline(tiny_pipe, deepcache_onnx, ExportOptions(bucket=BUCKET, deepcache_branches=(BRANCH,)))
    backend = OnnxRuntimeBackend.for_pipeline(tiny_pipe, deepcache_onnx)
    torch_runtime, config = tiny_pipe.torch_runtime(), model_config(tiny_pipe)
    for form in ("unet_deepcache_full", "unet_deepcache_shallow"):  # graph by graph, on the contracts' inputs
        component = f"{form}_b{BRANCH}"
        inputs = CONTRACTS[component].sample_inputs(axis_values(BUCKET, config))
        reference = call_runtime(torch_runtime, component, inputs, (2, 2))
        test = call_runtime(backend, component, inputs, (2, 2))
        for name, a, b in zip(CONTRACTS[component].output_names, *(
                (x,) if torch.is_tensor(x) else x for x in (reference, test))):
            print(f"{component} {name}: SQNR {sqnr_db(a, b):.1f} dB")
            assert a.shape == b.shape and sqnr_db(a, b) >= FP32_MIN_SQNR_DB, (component, name)

    image, pose = samples("person_red_front")
    request = scenarios.t2(image, pose, samples("person_red_walking")[1], tile_size=(64, 64), seed=0)
    for settings in (dict(deepcache_interval=2, deepcache_branch=BRANCH),
                     dict(deepcache_interval=3, deepcache_branch=BRANCH, guidance_interval=(0.25, 0.75)),
                     dict(guidance_interval=(0.5, 1.0))):
        runs = [tiny_pipe(request, num_inference_steps=4, output_type="pt", progress=False, runtime=runtime,
                          **settings).results[0] for runtime in (torch_runtime, backend)]
        score = ssim(runs[0].canvas[None], runs[1].canvas[None])
        print(f"{settings}: SSIM {score:.6f}, latents {float((runs[0].latents - runs[1].latents).abs().max()):.2e}")
        assert score >= FP32_MIN_SSIM, settings


def test_a_branch_that_was_not_exported_names_the_fix(tiny_pipe, deepcache_onnx, samples, tmp_path):
    backend = prepare_runtime("onnxruntime", tiny_pipe, deepcache_onnx.parent.parent, BUCKET,
                              deepcache_branches=(BRANCH,))
    image, pose = samples("person_red_front")
    request = scenarios.t2(image, pose, samples("person_red_walking")[1], tile_size=(64, 64), seed=0)
    assert backend.deepcache_branches() == {BRANCH}
    fix = r"holds branches \[1\], not branch 3.*--deepcache-branch 3.*deepcache_branches=\(3,\)"
    with pytest.raises(InvalidArgumentError, match=fix):  # before any network runs
        tiny_pipe(request, num_inference_steps=2, deepcache_interval=2, deepcache_branch=3, runtime=backend,
                  progress=False)
    with pytest.raises(InvalidArgumentError, match=fix):  # the SDK refuses it when made, not per request
        IMAGPoseGenerator(tiny_pipe, runtime=backend, num_inference_steps=2, deepcache_interval=2, deepcache_branch=3)
    with pytest.raises(ExportError, match=r"no unet_deepcache_full_b3.*ExportOptions\(deepcache_branches=\(3,\)\)"):
        backend.unet_deepcache_full(torch.zeros(1, 9, 16, 16), torch.zeros(1), None, None, (2, 2), 3)  # called directly
    with pytest.raises(InvalidArgumentError, match="deepcache_branch 6 is beyond this UNet's skip branches 0..5"):
        export_component(tiny_pipe, "unet_deepcache_full_b6", tmp_path, ExportOptions(bucket=BUCKET))
    with pytest.raises(InvalidArgumentError, match="deepcache_branches must be integers"):
        ExportOptions(deepcache_branches=(-1,))
    assert not any(tmp_path.iterdir())
