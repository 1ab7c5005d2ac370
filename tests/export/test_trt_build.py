"""Everything up to the TensorRT builder call (tensorrt cannot be installed on the CPU machine)."""

import importlib.util

import pytest

from imagpose.export import ExportError, ShapeBucket
from imagpose.export.runtime.tensorrt_backend import select_engine
from imagpose.export.trt_build import BuildOptions, build_engines, plan_builds

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def test_static_bucket_plans_have_exact_shapes_and_trtexec(tiny_onnx, tmp_path):
    onnx_dir, _ = tiny_onnx
    buckets = (ShapeBucket(1, 64, 64, 2, 2), ShapeBucket(2, 128, 96, 2, 2))
    plans = plan_builds(onnx_dir, tmp_path, BuildOptions(buckets=buckets, timing_cache=str(tmp_path / "tc")))
    unet = [p for p in plans if p.component == "unet"]
    assert [p.engine_path.name for p in unet] == ["unet.b1_64x64_2x2.plan", "unet.b2_128x96_2x2.plan"]
    low, opt, high = unet[1].profile["sample"]
    assert low == opt == high == (4, 9, 32, 24)  # 2 requests x CFG, 2x2 tiles of 128x96 px -> 32x24 latent
    assert unet[1].profile["encoder_hidden_states"][0] == (4, 257 + 2 * 1, 32)
    decoder = next(p for p in plans if p.component == "vae_decoder" and p.bucket.batch == 2)
    assert decoder.profile["latents"][0] == (2, 4, 32, 24)  # no CFG outside the UNet
    command = unet[0].trtexec_command()
    for flag in ("--stronglyTyped", "--builderOptimizationLevel=3", "--minShapes=sample:2x9x16x16",
                 "--timingCacheFile=", "--saveEngine="):
        assert flag in command


def test_dynamic_profile_spans_the_buckets(tiny_onnx, tmp_path):
    onnx_dir, _ = tiny_onnx
    buckets = (ShapeBucket(1, 64, 64, 2, 2), ShapeBucket(4, 128, 128, 2, 2), ShapeBucket(2, 64, 128, 2, 2))
    plans = plan_builds(onnx_dir, tmp_path, BuildOptions(buckets=buckets, dynamic=True, components=("unet",)))
    (plan,) = plans
    assert plan.engine_path.name == "unet.dynamic.plan"
    assert plan.profile["sample"] == ((2, 9, 16, 16), (2, 9, 16, 16), (8, 9, 32, 32))


def test_bad_build_requests(tiny_onnx, tmp_path):
    onnx_dir, _ = tiny_onnx
    with pytest.raises(ExportError, match="another grid"):
        plan_builds(onnx_dir, tmp_path, BuildOptions(buckets=(ShapeBucket(1, 64, 64, 2, 3),)))
    with pytest.raises(ExportError, match="no manifest.json"):
        plan_builds(tmp_path, tmp_path, BuildOptions())
    with pytest.raises(ValueError, match="BATCH,TILE_HxTILE_W,ROWSxCOLS"):
        ShapeBucket.parse("512x512")


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_build_without_tensorrt_says_what_to_install(tiny_onnx, tmp_path):
    with pytest.raises(ImportError, match=r"imagpose\[trt\]"):
        build_engines(tiny_onnx[0], tmp_path, BuildOptions(buckets=(ShapeBucket(1, 64, 64, 2, 2),)))
    plans = build_engines(tiny_onnx[0], tmp_path, BuildOptions(buckets=(ShapeBucket(1, 64, 64, 2, 2),)),
                          dry_run=True)
    assert len(plans) == 6 and not any(tmp_path.iterdir())


def test_engine_selection_and_out_of_bucket_error():
    entries = [
        {"engine": "unet.b1_64x64_2x2.plan", "bucket": {"batch": 1},
         "profile": {"sample": [[2, 9, 16, 16], [2, 9, 16, 16], [2, 9, 16, 16]]}},
        {"engine": "unet.dynamic.plan", "bucket": None,
         "profile": {"sample": [[2, 9, 16, 16], [2, 9, 16, 16], [8, 9, 32, 32]]}},
    ]
    assert select_engine(entries, {"sample": (2, 9, 16, 16)}, "unet")["engine"] == "unet.b1_64x64_2x2.plan"
    assert select_engine(entries, {"sample": (4, 9, 32, 16)}, "unet")["engine"] == "unet.dynamic.plan"
    with pytest.raises(ExportError, match="No unet engine covers input shapes"):
        select_engine(entries, {"sample": (2, 9, 64, 64)}, "unet")
