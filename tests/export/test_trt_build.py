"""Everything up to the TensorRT builder call, which these tests run without: plans and profiles, engine
keys, cache hits and misses, sidecar checks, and the errors when tensorrt is missing."""

import importlib.util
import json
import shutil
from dataclasses import replace

import pytest

from imagpose import build_pipeline
from imagpose.errors import InvalidArgumentError, MissingDependencyError
from imagpose.export import ExportError, ShapeBucket
from imagpose.export.digests import combined_digest
from imagpose.export.runtime.tensorrt_backend import (
    TensorRTBackend,
    check_engines_match,
    read_engine_index,
    select_engine,
)
from imagpose.export.trt_build import (
    BuildOptions,
    BuildTarget,
    build_engines,
    cached_engine,
    plan_builds,
    write_engine,
)
from tests.export.conftest import BUCKET
from tests.export.test_onnx_cache import flip_bytes

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
TARGET = BuildTarget("10.8.0.43", "NVIDIA H200", (9, 0))
SMALL = ("flc_tokenizer", "pose_guider")


def _fake_build(onnx_dir, engine_dir, options):
    """Write what build_engine writes after the builder call, with stand-in engine bytes (no TensorRT here)."""
    for plan in plan_builds(onnx_dir, engine_dir, options):
        write_engine(plan, TARGET, f"serialized {plan.component} engine".encode() * 8, 1.0)


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
    for flag in ("--stronglyTyped", "--noTF32", "--builderOptimizationLevel=3", "--minShapes=sample:2x9x16x16",
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
    with pytest.raises(InvalidArgumentError, match="BATCH,TILE_HxTILE_W,ROWSxCOLS"):
        ShapeBucket.parse("512x512")


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_build_without_tensorrt_says_what_to_install(tiny_onnx, tmp_path):
    with pytest.raises(MissingDependencyError, match=r"imagpose\[trt\]"):
        build_engines(tiny_onnx[0], tmp_path, BuildOptions(buckets=(BUCKET,)))
    with pytest.raises(MissingDependencyError, match=r"imagpose\[trt\]"):
        TensorRTBackend(tmp_path)
    with pytest.raises(MissingDependencyError, match=r"imagpose\[trt\]"):
        BuildTarget.current()
    plans = build_engines(tiny_onnx[0], tmp_path, BuildOptions(buckets=(BUCKET,)), dry_run=True)
    assert len(plans) == 6 and not any(tmp_path.iterdir())


def test_engine_key_covers_everything_the_engine_depends_on(tiny_onnx, tmp_path):
    onnx_dir, _ = tiny_onnx

    def unet_plan(**changes):
        (plan,) = plan_builds(onnx_dir, tmp_path, BuildOptions(**{"buckets": (BUCKET,), "components": ("unet",),
                                                                  **changes}))
        return plan

    plan = unet_plan()
    fields = plan.key_fields(TARGET)
    assert fields["onnx_sha256"] == combined_digest(json.loads((onnx_dir / "unet.json").read_text())["files"])
    assert fields["profile"]["sample"] == [[2, 9, 16, 16]] * 3 and fields["strongly_typed"]
    assert unet_plan(timing_cache=str(tmp_path / "tc")).key(TARGET) == plan.key(TARGET)  # timing only
    other_onnx = replace(plan, onnx={**plan.onnx, "files": {"unet.onnx": {"bytes": 1, "sha256": "0" * 64}}})
    variants = [
        plan.key(replace(TARGET, tensorrt="10.9.0.34")), plan.key(replace(TARGET, gpu="NVIDIA H100 80GB HBM3")),
        plan.key(replace(TARGET, compute_capability=(8, 9))), other_onnx.key(TARGET),
        unet_plan(optimization_level=5).key(TARGET), unet_plan(workspace_gib=4.0).key(TARGET),
        unet_plan(tf32=True).key(TARGET), unet_plan(buckets=(ShapeBucket(2, 64, 64, 2, 2),)).key(TARGET),
        unet_plan(dynamic=True, buckets=(BUCKET, ShapeBucket(1, 128, 128, 2, 2))).key(TARGET),
    ]
    assert len({plan.key(TARGET), *variants}) == 1 + len(variants)


def test_engine_cache_hits_and_misses(tiny_onnx, tmp_path):
    onnx_dir, _ = tiny_onnx
    options = BuildOptions(buckets=(BUCKET,), components=SMALL)
    _fake_build(onnx_dir, tmp_path, options)
    plans = build_engines(onnx_dir, tmp_path, options, target=TARGET)  # every key matches: nothing to build
    assert [p.engine_path.name for p in plans if p.reused] == ["flc_tokenizer.b1_64x64_2x2.plan",
                                                               "pose_guider.b1_64x64_2x2.plan"]
    index = json.loads((tmp_path / "engines.json").read_text())
    assert [e["key"] for e in index["engines"]] == [p.key(TARGET) for p in plans]

    plan = plans[0]
    assert cached_engine(plan, TARGET) is not None
    assert cached_engine(plan, replace(TARGET, tensorrt="10.9.0.34")) is None
    assert cached_engine(plan, replace(TARGET, gpu="NVIDIA L4", compute_capability=(8, 9))) is None
    (level4,) = plan_builds(onnx_dir, tmp_path, replace(options, optimization_level=4, components=SMALL[:1]))
    assert cached_engine(level4, TARGET) is None
    flip_bytes(plan.engine_path, 8)  # same size, inode and mtime
    assert cached_engine(plan, TARGET) is None
    if not HAS_TRT:  # a miss means a build, which needs TensorRT
        with pytest.raises(MissingDependencyError):
            build_engines(onnx_dir, tmp_path, options, target=TARGET)


def test_engine_sidecars_are_checked_without_the_onnx_files(tiny_pipe, tiny_onnx, tmp_path):
    onnx_dir = tmp_path / "onnx"
    shutil.copytree(tiny_onnx[0], onnx_dir)
    engine_dir, options = tmp_path / "engines", BuildOptions(buckets=(BUCKET,), components=SMALL)
    _fake_build(onnx_dir, engine_dir, options)
    build_engines(onnx_dir, engine_dir, options, target=TARGET)
    shutil.rmtree(onnx_dir)

    entries = read_engine_index(engine_dir, TARGET)
    check_engines_match(entries, tiny_pipe, engine_dir)
    with pytest.raises(ExportError, match="pose_guider.b1_64x64_2x2.plan was built from other weights"):
        other = build_pipeline("tiny", seed=0)
        other.pose_guider.load_state_dict(build_pipeline("tiny", seed=7).pose_guider.state_dict())
        check_engines_match(entries, other, engine_dir)
    with pytest.raises(ExportError, match=r"built with TensorRT 10.8.0.43 on NVIDIA H200 \(compute capability 9.0\)"
                                          r"; this is TensorRT 10.8.0.43 on NVIDIA L4"):
        read_engine_index(engine_dir, replace(TARGET, gpu="NVIDIA L4"))
    flip_bytes(engine_dir / "flc_tokenizer.b1_64x64_2x2.plan", 8)
    with pytest.raises(ExportError, match="flc_tokenizer.b1_64x64_2x2.plan changed since it was written"):
        read_engine_index(engine_dir, TARGET)


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
