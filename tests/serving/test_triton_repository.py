"""Triton model repositories offline: what `imagpose export triton` writes for each flavour, that it validates
against Triton's ModelConfig schema and the served files' shapes, and that a broken repository is caught."""

import hashlib
import json
import shutil

import pytest

pytest.importorskip("tritonclient.grpc")

from imagpose.errors import InvalidArgumentError  # noqa: E402
from imagpose.export import ExportOptions, ShapeBucket, export_pipeline  # noqa: E402
from imagpose.export.components import COMPONENTS, CONTRACTS, model_config  # noqa: E402
from imagpose.export.onnx_export import ExportError  # noqa: E402
from imagpose.export.trt_build import BuildOptions, plan_builds  # noqa: E402
from imagpose.serving.triton.model_configs import (  # noqa: E402
    config_text,
    network_config,
    parse_config,
    shapes_from_profile,
)
from imagpose.serving.triton.repository import RepositoryOptions, write_repository  # noqa: E402
from imagpose.serving.triton.validate import check_network_config, profile_shapes, validate_repository  # noqa: E402

NETWORKS = sorted(COMPONENTS)
BUCKET = ShapeBucket(1, 64, 64, 2, 2)


@pytest.fixture(scope="module")
def exported(tiny_pipe, tmp_path_factory):
    onnx_dir = tmp_path_factory.mktemp("triton-onnx")
    export_pipeline(tiny_pipe, onnx_dir, ExportOptions(bucket=BUCKET))
    return onnx_dir


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("runtime", ["python", "onnxruntime"])
def test_the_repository_has_one_model_per_network_and_the_orchestrator_and_validates(tiny_pipe, exported, tmp_path,
                                                                                     runtime):
    out = tmp_path / "repo"
    (out / "unet").mkdir(parents=True)
    (out / "unet" / "notes.txt").write_text("mine")  # a user's files stay where they are
    (out / "README.md").write_text("mine")
    write_repository(tiny_pipe, out, RepositoryOptions(runtime, max_batch_size=4), onnx_dir=exported)

    assert (out / "unet" / "notes.txt").read_text() == "mine" and (out / "README.md").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(NETWORKS + ["imagpose"])
    assert not [p for p in out.rglob(".imagpose-*")]  # no staging or scratch export left behind
    assert validate_repository(out) == []
    for name in NETWORKS:
        config = parse_config((out / name / "config.pbtxt").read_text())
        contract = CONTRACTS[name]
        assert config.name == name and config.max_batch_size == 0
        assert [t.name for t in config.input] == contract.input_names
        assert [t.name for t in config.output] == contract.output_names
        assert (config.platform, config.backend) == (("onnxruntime_onnx", "") if runtime == "onnxruntime"
                                                     else ("", "python"))
        assert sha(out / name / "1" / "model.onnx") == sha(exported / f"{name}.onnx")  # the export, as checked
        assert (out / name / "1" / "model.py").is_file() == (runtime == "python")
    unet = parse_config((out / "unet" / "config.pbtxt").read_text())
    assert [list(t.dims) for t in unet.input] == [[-1, 9, -1, -1], [-1], [-1, -1, 32], [-1, 32, -1, -1]]
    orchestrator = parse_config((out / "imagpose" / "config.pbtxt").read_text())
    assert orchestrator.backend == "python" and orchestrator.max_batch_size == 4
    assert orchestrator.HasField("dynamic_batching")
    record = json.loads((out / "imagpose" / "1" / "serving.json").read_text())
    assert record["grid"] == [2, 2] and record["flavour"] == runtime and record["unet_rows"] is None
    assert (out / "imagpose" / "1" / "pipeline" / "unet" / "config.json").is_file()
    assert not list((out / "imagpose").rglob("*.safetensors"))  # configs only: the networks hold the weights


def broken_unet_dim(repo):
    path = repo / "unet" / "config.pbtxt"
    path.write_text(path.read_text().replace("dims: [-1, 9, -1, -1]", "dims: [-1, 8, -1, -1]"))


def broken_enum(repo):
    path = repo / "vae_decoder" / "config.pbtxt"
    path.write_text(path.read_text().replace("TYPE_FP32", "TYPE_FP33", 1))


def broken_batch(repo):
    path = repo / "vae_encoder" / "config.pbtxt"
    path.write_text("max_batch_size: 4\n" + path.read_text())


def missing_model(repo):
    (repo / "pose_guider" / "1" / "model.onnx").unlink()


def corrupt_model(repo):
    (repo / "flc_tokenizer" / "1" / "model.onnx").write_bytes(b"not a model")


def altered_model_same_size(repo):
    path = repo / "unet" / "1" / "model.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last initializer byte: the graph still loads, with other weights
    path.write_bytes(bytes(data))


def extra_model_without_its_file(repo):
    (repo / "other" / "1").mkdir(parents=True)
    (repo / "other" / "config.pbtxt").write_text('name: "other"\nbackend: "onnxruntime"\n')


@pytest.mark.parametrize("breakage, expected", [
    (broken_unet_dim, "unet: config.pbtxt: 'sample' has dims [-1, 8, -1, -1], the served file has ['dynamic', 9,"),
    (broken_enum, "vae_decoder: config.pbtxt does not parse as Triton's ModelConfig"),
    (broken_batch, "vae_encoder: config.pbtxt has max_batch_size 4"),
    (missing_model, "pose_guider: 1/model.onnx is missing"),
    (corrupt_model, "flc_tokenizer:"),
    (altered_model_same_size, "unet: "),
    (extra_model_without_its_file, "other: 1/model.onnx is missing; Triton loads every model"),
])
def test_a_broken_repository_is_caught(tiny_pipe, exported, tmp_path, breakage, expected):
    repo = tmp_path / "repo"
    write_repository(tiny_pipe, repo, RepositoryOptions("python"), onnx_dir=exported)
    breakage(repo)
    problems = validate_repository(repo)
    assert any(p.startswith(expected) for p in problems), problems


def test_the_altered_file_is_named_with_its_digest(tiny_pipe, exported, tmp_path):
    repo = tmp_path / "repo"
    write_repository(tiny_pipe, repo, RepositoryOptions("onnxruntime"), onnx_dir=exported)
    size = (repo / "unet" / "1" / "model.onnx").stat().st_size
    altered_model_same_size(repo)
    assert (repo / "unet" / "1" / "model.onnx").stat().st_size == size
    assert validate_repository(repo) == [f"unet: {repo / 'unet' / '1' / 'model.onnx'} changed since it was written "
                                         "(its SHA-256 differs from the recorded one)"]


def test_a_model_beside_ours_that_triton_can_load_passes(tiny_pipe, exported, tmp_path):
    repo = tmp_path / "repo"
    write_repository(tiny_pipe, repo, RepositoryOptions("onnxruntime"), onnx_dir=exported)
    (repo / "other" / "1").mkdir(parents=True)
    (repo / "other" / "config.pbtxt").write_text('name: "other"\nbackend: "python"\n')
    (repo / "other" / "1" / "model.py").write_text("class TritonPythonModel: ...\n")
    assert validate_repository(repo) == []


def test_an_empty_folder_or_one_without_the_orchestrator_fails(tiny_pipe, exported, tmp_path):
    (tmp_path / "empty").mkdir()
    assert validate_repository(tmp_path / "empty") == [f"{tmp_path / 'empty'} holds no models; write a repository "
                                                       "with `imagpose export triton`."]
    repo = tmp_path / "repo"
    write_repository(tiny_pipe, repo, RepositoryOptions("onnxruntime"), onnx_dir=exported)
    shutil.rmtree(repo / "imagpose")
    assert any(p.startswith("imagpose: the orchestrator model is missing") for p in validate_repository(repo))


def test_the_check_command_validates_and_fails_on_a_problem(tiny_pipe, exported, tmp_path, capsys):
    from imagpose.cli import main

    repo = tmp_path / "repo"
    assert main(["export", "triton", "--preset", "tiny", "--runtime", "onnxruntime", "--onnx", str(exported),
                 "--out", str(repo)]) == 0
    assert main(["export", "triton", "--check", str(repo)]) == 0
    broken_unet_dim(repo)
    assert main(["export", "triton", "--check", str(repo)]) == 1
    assert "FAIL (1 problem(s))" in capsys.readouterr().out


@pytest.mark.parametrize("dynamic", [False, True])
def test_tensorrt_configs_follow_the_engine_profiles_export_trt_plans(tiny_pipe, exported, tmp_path, dynamic):
    """The tensorrt_plan configs come from the profiles `imagpose export trt` builds with (its plans, the same
    numbers its build records hold); a config that leaves the profile is caught. Engines themselves need a GPU."""
    buckets = (BUCKET, ShapeBucket(2, 64, 64, 2, 2)) if dynamic else (BUCKET,)
    plans = plan_builds(exported, tmp_path / "engines", BuildOptions(buckets=buckets, dynamic=dynamic))
    assert sorted(plan.component for plan in plans) == NETWORKS
    for plan in plans:
        profile = {name: [list(shape) for shape in dims] for name, dims in plan.profile.items()}  # as recorded
        shapes = shapes_from_profile(plan.component, profile, model_config(tiny_pipe), "fp32")
        config = parse_config(config_text(network_config(plan.component, "tensorrt", shapes, "KIND_GPU"), "test"))
        assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
        actual = profile_shapes(plan.component, profile, "fp32")
        assert check_network_config(plan.component, config, actual) == []
        for tensor in config.input:
            low, _, high = profile[tensor.name]
            assert list(tensor.dims) == [lo if lo == hi else -1 for lo, hi in zip(low, high)]
        if plan.component == "unet":
            # 2B rows, the latent of a 2x2 canvas of 64 px tiles
            assert list(config.input[0].dims) == ([-1, 9, 16, 16] if dynamic else [2, 9, 16, 16])
            config.input[0].dims[2] = 17
            assert check_network_config("unet", config, actual) == [
                "unet: config.pbtxt: 'sample' has dims [" + ("-1" if dynamic else "2")
                + ", 9, 17, 16], the served file has [" + ("'dynamic'" if dynamic else "2") + ", 9, 16, 16]"]


def test_the_tensorrt_flavour_without_engines_says_how_to_build_them(tiny_pipe, exported, tmp_path):
    with pytest.raises(InvalidArgumentError, match="imagpose export trt"):
        write_repository(tiny_pipe, tmp_path / "repo", RepositoryOptions("tensorrt"))
    with pytest.raises(ExportError, match="no engines.json.*imagpose export trt"):
        write_repository(tiny_pipe, tmp_path / "repo", RepositoryOptions("tensorrt"), engines_dir=exported)
    assert not (tmp_path / "repo").exists()  # nothing written, not even the folder


def test_a_repository_of_other_weights_is_refused(exported, tmp_path):
    from imagpose import build_pipeline

    other = build_pipeline("tiny", seed=1)
    with pytest.raises(ExportError, match="other weights"):
        write_repository(other, tmp_path / "repo", RepositoryOptions("python"), onnx_dir=exported)
    shutil.rmtree(tmp_path / "repo", ignore_errors=True)


@pytest.mark.parametrize("vae_class", ["AutoencoderTiny", "AutoencoderKL"])
def test_the_orchestrator_pipeline_is_built_with_the_autoencoder_class_of_the_model(tmp_path, vae_class):
    """The orchestrator's configs-only pipeline builds whichever autoencoder class the model holds (meta device)."""
    from diffusers import AutoencoderKL

    from imagpose.pipeline import IMAGPosePipeline
    from imagpose.presets import build_components
    from imagpose.serving.triton.pipeline_configs import load_config_only_pipeline, write_pipeline_configs

    components = build_components("tiny")
    if vae_class == "AutoencoderKL":
        components["vae"] = AutoencoderKL(block_out_channels=[8, 16, 32, 32], norm_num_groups=2,
                                          down_block_types=["DownEncoderBlock2D"] * 4,
                                          up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=1)
    write_pipeline_configs(IMAGPosePipeline(**components), tmp_path / "configs")
    pipe = load_config_only_pipeline(tmp_path / "configs")
    assert type(pipe.vae).__name__ == vae_class and pipe.vae_scale_factor == 8
    assert next(pipe.vae.parameters()).device.type == "meta"


def test_the_orchestrator_samples_a_distilled_student_with_its_own_defaults(tmp_path):
    """A few-step student's repository carries its LCM scheduler and sampling.json: a request without settings gets
    the student's 4 unguided lcm steps, one UNet row per request."""
    from diffusers import LCMScheduler

    from imagpose.pipeline import IMAGPosePipeline
    from imagpose.presets import build_components
    from imagpose.sampling_config import SamplingConfig
    from imagpose.serving.triton.pipeline_configs import load_config_only_pipeline, write_pipeline_configs

    components = build_components("tiny")
    components["scheduler"] = LCMScheduler.from_config(components["scheduler"].config)
    student = IMAGPosePipeline(**components)
    student.default_sampling = SamplingConfig(num_inference_steps=4, guidance_scale=1.0, sampler="lcm")
    student.distillation = {"student_steps": 4}
    write_pipeline_configs(student, tmp_path / "configs")
    pipe = load_config_only_pipeline(tmp_path / "configs")
    assert pipe.sampler == "lcm" and pipe.distillation == {"student_steps": 4}
    assert pipe.sampling_config() == student.default_sampling
