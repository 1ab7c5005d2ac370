"""Every bad input gets a clear answer: an imagpose.errors type naming the file or value, the problem and the fix,
and on the command line exit code 2 with one ``imagpose <command>: error:`` line, never a traceback."""

import json
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from imagpose import build_pipeline, scenarios
from imagpose.canvas import CanvasError, PoseRequest, View, build_canvas
from imagpose.cli import main
from imagpose.errors import DeviceError, InputFileError, InvalidArgumentError
from imagpose.images import POSE_BACKGROUND, ImageInputError, load_image
from imagpose.pose import MAX_POSE_JSON_BYTES, PoseError, keypoints_from_json

# OpenPose-18 keypoints of a 176x256 person (x, y, confidence)
FRONT = [[88, 42, 1], [88, 62, 1], [68, 64, 1], [62, 98, 1], [58, 130, 1], [108, 64, 1], [114, 98, 1],
         [118, 130, 1], [77, 132, 1], [76, 180, 1], [75, 228, 1], [99, 132, 1], [100, 180, 1], [101, 228, 1],
         [84, 38, 1], [92, 38, 1], [79, 40, 1], [97, 40, 1]]
FLAT = [float(v) for point in FRONT for v in point]


def _cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI in-process; assert a user error (exit 2, no traceback) and return all of stderr."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refuses the value while parsing
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err, err
    return err


def user_error(capsys, argv: list[str]) -> str:
    """An argparse error: argparse prints its usage, then the one ``imagpose <command>: error:`` line returned."""
    err = _cli_error(capsys, argv)
    lines = [line for line in err.splitlines() if line.startswith("imagpose")]
    assert len(lines) == 1 and lines[0].startswith(f"imagpose {argv[0]}: error:"), err
    return lines[0]


def handler_error(capsys, argv: list[str]) -> str:
    """A user error raised after parsing: exactly one line on stderr, returned."""
    err = _cli_error(capsys, argv)
    assert len(err.splitlines()) == 1 and err.startswith(f"imagpose {argv[0]}: error:"), err
    return err.strip()


# ----------------------------------------------------------------------------- 1. EXIF orientation
def _jpeg_with_orientation(path, orientation: int) -> Image.Image:
    """A 60x40 (width x height) JPEG with a bright top-left block, tagged with an EXIF orientation."""
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:10, :20] = (250, 250, 250)
    image = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, quality=95, exif=exif)
    with Image.open(path) as handle:
        return handle.convert("RGB")


@pytest.mark.parametrize("orientation, transpose", [
    (3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_270), (8, Image.Transpose.ROTATE_90)])
def test_exif_orientation_is_applied_to_person_and_pose_files(tmp_path, orientation, transpose):
    path = tmp_path / f"phone_{orientation}.jpg"
    stored = _jpeg_with_orientation(path, orientation)
    displayed = np.asarray(stored.transpose(transpose))
    assert np.array_equal(np.asarray(load_image(path, "person")), displayed)
    assert np.array_equal(np.asarray(load_image(path, "pose", background=POSE_BACKGROUND)), displayed)


def test_keypoints_measured_on_the_displayed_photo_match_its_size(tmp_path):
    """A phone photo stored 60x40 but displayed 40x60, with keypoints measured on the displayed image."""
    photo = tmp_path / "phone.jpg"
    _jpeg_with_orientation(photo, 6)
    pose = tmp_path / "phone.json"
    points = [[x * 40 / 176, y * 60 / 256, c] for x, y, c in FRONT]
    pose.write_text(json.dumps({"format": "openpose18", "width": 40, "height": 60, "keypoints": points}))
    request = scenarios.t2(photo, pose, pose)
    canvas = build_canvas(request, pad_multiple=64)
    assert (canvas.layout.tile_height, canvas.layout.tile_width) == (60, 40)
    assert canvas.reference.size == (40, 60)
    assert canvas.reference.getpixel((35, 2))[0] > 200  # the bright block is top-right once displayed
    pipe = build_pipeline("tiny")
    assert pipe.request_layout(request) == pipe.build_canvas(request).layout  # the header-only geometry too


# ----------------------------------------------------------------------------- 2. pose JSON
def _openpose(**person) -> dict:
    return {"people": [person], "canvas_width": 176, "canvas_height": 256}


def _ours(**fields) -> dict:
    return {"format": "openpose18", "width": 176, "height": 256, "keypoints": FRONT, **fields}


@pytest.mark.parametrize("content, match", [
    ([], "a JSON object"),
    ([1, 2, 3], "a JSON object"),
    ("x", "a JSON object"),
    ({"people": [None]}, "person 0 is not a JSON object"),
    ({"people": [{}]}, "no 'pose_keypoints_2d'"),
    ({"people": "everyone"}, "'people' must be a list"),
    ({"format": "openpose18", "keypoints": FRONT}, "--pose-size"),
    ({"people": [{"pose_keypoints_2d": FLAT}]}, "--pose-size"),
    (_openpose(pose_keypoints_2d=["a"] * 54), "not a number"),
    (_openpose(pose_keypoints_2d=FLAT[:-1]), "multiple of 3"),
    (_openpose(pose_keypoints_2d=FLAT[:-3]), "18 joints"),
    (_openpose(pose_keypoints_2d=FLAT, hand_left_keypoints_2d=[1.0] * 60, hand_right_keypoints_2d=[1.0] * 63),
     "21 joints"),
    (_ours(keypoints=FRONT[:-1] + [[1, 2]]), "ragged"),
    (_ours(keypoints=[["a", "b", 1]] * 18), "not a number"),
    (_ours(keypoints=FRONT[:-1]), "18 joints"),
    (_ours(width="wide"), "width"),
    (_ours(height=0), "height"),
    (_ours(hands=[[[1, 2, 1]] * 20] * 2), "21 joints"),
    (_ours(hands=[[[1, 2, 1]] * 21, [[1, 2]] * 21]), "one form for both hands"),
    (_ours(hands=[[[1, 2, 1]] * 21]), "2 hands"),
    ({"format": "openpose18", "width": 176, "height": 256}, "no 'keypoints'"),
])
def test_malformed_pose_json_names_the_file_and_the_problem(tmp_path, content, match):
    path = tmp_path / "pose.json"
    path.write_text(json.dumps(content))
    with pytest.raises(PoseError, match=match) as info:
        keypoints_from_json(path)
    assert str(path) in str(info.value)


def test_pose_json_that_is_not_utf8_text(tmp_path):
    path = tmp_path / "pose.json"
    path.write_bytes(b'\xff\xfe{"people": []}')
    with pytest.raises(PoseError, match="UTF-8") as info:
        keypoints_from_json(path)
    assert str(path) in str(info.value)


def test_pose_json_paths_that_are_not_regular_files_or_too_big(tmp_path):
    with pytest.raises(PoseError, match="is a directory"):
        keypoints_from_json(tmp_path)
    with pytest.raises(PoseError, match="not found"):
        keypoints_from_json(tmp_path / "absent.json")
    big = tmp_path / "big.json"
    with open(big, "wb") as handle:  # sparse: costs no disk
        handle.truncate(MAX_POSE_JSON_BYTES + 1)
    with pytest.raises(PoseError, match="larger than the 10 MB"):
        keypoints_from_json(big)


@pytest.mark.skipif(not __import__("os").path.exists("/dev/zero"), reason="needs /dev/zero")
def test_pose_json_from_a_device_is_refused_without_reading_it():
    with pytest.raises(PoseError, match="not a regular file"):
        keypoints_from_json("/dev/zero")


def test_sizeless_source_keypoints_take_their_image_size(samples, tmp_path):
    image, _ = samples("person_blue_front")  # 176x256
    _, target = samples("person_blue_walking")
    source_pose = tmp_path / "openpose_source.json"
    source_pose.write_text(json.dumps({"people": [{"pose_keypoints_2d": FLAT}]}))
    canvas = build_canvas(scenarios.t2(image, source_pose, target), pad_multiple=64)
    assert (canvas.layout.tile_height, canvas.layout.tile_width) == (256, 176)


def test_openpose_json_without_canvas_size_uses_the_given_size():
    keypoints = keypoints_from_json({"people": [{"pose_keypoints_2d": FLAT}]}, 176, 256)
    assert (keypoints.width, keypoints.height) == (176, 256)


# ----------------------------------------------------------------------------- 3. images
def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` RGB pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [10_000, 20_000])  # PIL warns above MAX_IMAGE_PIXELS and refuses above twice it
def test_decompression_bomb_is_refused_with_the_pixel_limit(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_declaring(side, side))
    with pytest.raises(ImageInputError, match="decompression bomb") as info:
        load_image(path, "view 0 person image")
    message = str(info.value)
    assert f"{Image.MAX_IMAGE_PIXELS:,}" in message and str(path) in message


def test_image_paths_that_are_directories_or_devices(tmp_path):
    with pytest.raises(ImageInputError, match="is a directory"):
        load_image(tmp_path, "source")
    with pytest.raises(ImageInputError, match="file not found"):
        load_image(tmp_path / "missing.png", "source")
    if __import__("os").path.exists("/dev/zero"):
        with pytest.raises(ImageInputError, match="not a regular file"):
            load_image("/dev/zero", "source")


# ----------------------------------------------------------------------------- 4. canvas geometry
def _t2(tile_size, grid=(2, 2)):
    person = Image.new("RGB", (64, 64), (200, 30, 30))
    pose = Image.new("RGB", (64, 64))
    return scenarios.t2(person, pose, pose, grid=grid, tile_size=tile_size, seed=0)


def test_tiles_too_small_for_the_flc_patch_are_refused_with_the_minimum(tiny_pipe):
    """tiny: pad_multiple 32, VAE factor 8, FLC patch 16 -> the canvas latent needs >= 16 per side, i.e. padded
    tiles of 64 on a 2x2 grid: tiles from 33x33 run, 32x32 failed inside the FLC convolution."""
    with pytest.raises(CanvasError, match="at least 33x33") as info:
        tiny_pipe.build_canvas(_t2((32, 32)))
    assert "FLC" in str(info.value) and "2x2" in str(info.value)
    with pytest.raises(CanvasError, match="at least 97x33"):  # one row: padded tile height 128
        tiny_pipe.build_canvas(_t2((64, 64), grid=(1, 2)))
    for tile, grid in (((33, 33), (2, 2)), ((97, 33), (1, 2))):  # the stated minimum really runs
        result = tiny_pipe(_t2(tile, grid), num_inference_steps=1, guidance_scale=1.0, progress=False)
        assert result.results[0].targets[0].size == tile[::-1]


def test_api_arguments_of_the_wrong_type_are_named_errors(tiny_pipe, samples):
    from imagpose.sdk import IMAGPoseGenerator

    image, pose = samples("person_red_front")
    _, target = samples("person_red_walking")
    with pytest.raises(CanvasError, match=r"tile_size must be two integers \(height, width\)"):
        tiny_pipe(scenarios.t2(image, pose, target, tile_size=(64.0, 64.0)), num_inference_steps=1, progress=False)
    with pytest.raises(InvalidArgumentError, match=r"seed must be an integer in \[0, 2\*\*63 - 1\], got '3'"):
        tiny_pipe(scenarios.t2(image, pose, target, tile_size=(64, 64), seed="3"), num_inference_steps=1,
                  progress=False)
    keypoints = np.full((18, 2), 30.0, dtype=np.float32)
    with pytest.raises(ImageInputError, match=r"OpenPose-18 keypoints.*Keypoints.from_array\(points, width, height\)"):
        tiny_pipe(scenarios.t2(image, pose, keypoints, tile_size=(64, 64)), num_inference_steps=1, progress=False)
    with IMAGPoseGenerator(tiny_pipe) as generator:
        with pytest.raises(InvalidArgumentError, match="generate takes a non-empty list of PoseRequests"):
            generator.generate(None)


def test_small_tiles_that_pad_to_a_valid_canvas_are_accepted():
    """SD1.5 geometry (pad_multiple 64): an 8x8 tile pads to 64x64, whose 2x2 canvas latent fits the FLC patch."""
    canvas = build_canvas(_t2((8, 8)), pad_multiple=64, vae_scale=8)
    assert canvas.layout.latent_size == (16, 16)


@pytest.mark.parametrize("make", [
    lambda: scenarios.t2("a.png", "a.json", "t.json", grid=(1, 1)),
    lambda: scenarios.t1("a.png", "a.json", "t.json", grid=(1, 1)),
    lambda: build_canvas(PoseRequest([View.source(Image.new("RGB", (64, 64)), Image.new("RGB", (64, 64)))],
                                     grid=(1, 1))),
])
def test_a_one_view_grid_asks_for_two_views(make):
    with pytest.raises(CanvasError, match="at least 2 views"):
        make()


@pytest.mark.parametrize("make, match", [
    (lambda: scenarios.t3([], "t.json"), "at least one"),
    (lambda: scenarios.t3([("a", "b")] * 4, "t.json"), "at most 3"),
    (lambda: scenarios.imagpose_star("a", "b", []), "at least one"),
    (lambda: scenarios.imagpose_star("a", "b", ["t"] * 4), "at most 3"),
])
def test_scenario_misuse_is_an_invalid_argument(make, match):
    with pytest.raises(InvalidArgumentError, match=match):
        make()


# ----------------------------------------------------------------------------- 5. CLI flags
@pytest.fixture
def no_model_build(monkeypatch):
    """Any model build fails the test: the refusals below must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the arguments were checked")

    monkeypatch.setattr("imagpose.presets.build_pipeline", refuse)


@pytest.mark.parametrize("flag, value, match", [
    ("--steps", "0", "num_inference_steps must be in"),
    ("--steps", "-3", "num_inference_steps must be in"),
    ("--steps", "two", "an integer"),
    ("--guidance", "nan", "guidance_scale must be a finite number >= 0"),
    ("--guidance", "inf", "guidance_scale must be a finite number >= 0"),
    ("--guidance", "-1", "guidance_scale must be a finite number >= 0"),
    ("--eta", "nan", "eta must be a finite number in [0, 1]"),
    ("--eta", "1.5", "eta must be a finite number in [0, 1]"),
    ("--tile-size", "0x0", "HEIGHTxWIDTH"),
    ("--tile-size", "abc", "HEIGHTxWIDTH"),
    ("--grid", "0x2", "ROWSxCOLS"),
    ("--grid", "-1x2", "ROWSxCOLS"),
    ("--max-memory-gib", "0", "--max-memory-gib"),
    ("--max-memory-gib", "nan", "--max-memory-gib"),
    ("--pose-size", "176by256", "WIDTHxHEIGHT"),
])
def test_out_of_range_flags_are_argparse_errors(capsys, generate_argv, no_model_build, flag, value, match, tmp_path):
    line = user_error(capsys, generate_argv + [f"{flag}={value}", "--out", str(tmp_path / "out")])
    assert flag in line and match in line and value in line


@pytest.mark.parametrize("device", ["cuda:99", "bogus", "cpu:3"])
def test_unavailable_devices_name_the_available_ones(capsys, generate_argv, no_model_build, device, tmp_path):
    line = handler_error(capsys, generate_argv + ["--device", device, "--out", str(tmp_path / "out")])
    assert f"--device {device}" in line and "available: cpu" in line


def test_cuda_without_cuda_is_a_device_error():
    import torch

    from imagpose.cli.common import check_device

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(DeviceError, match="available: cpu"):
        check_device("cuda")


def test_unknown_attention_backend_names_the_choices(capsys, generate_argv, no_model_build, tmp_path):
    line = handler_error(capsys, generate_argv + ["--attention-backend", "bogus", "--out", str(tmp_path / "o")])
    assert "'bogus'" in line and all(name in line for name in ("eager", "sdpa", "triton", "xformers"))


def test_verify_refuses_an_unknown_attention_backend(capsys, fixture_root):
    line = handler_error(capsys, ["verify-official", str(fixture_root), "--attention-backend", "bogus"])
    assert "eager, sdpa, triton, xformers" in line


def test_max_memory_gib_reaches_the_pipeline(generate_argv, tmp_path, monkeypatch):
    """--max-memory-gib is handed to IMAGPosePipeline.set_memory_limit in bytes (recorded here; the estimate
    behind it is the pipeline's)."""
    from imagpose.pipeline import IMAGPosePipeline

    limits = []
    monkeypatch.setattr(IMAGPosePipeline, "set_memory_limit", lambda self, limit: limits.append(limit),
                        raising=False)
    assert main(generate_argv + ["--max-memory-gib", "1.5", "--out", str(tmp_path / "out")]) == 0
    assert limits == [int(1.5 * 2**30)]
    assert main(generate_argv + ["--out", str(tmp_path / "again")]) == 0
    assert limits == [int(1.5 * 2**30)]  # no limit unless asked for


# ----------------------------------------------------------------------------- 6. generate requests
@pytest.mark.parametrize("extra, match", [
    (["--scenario", "t2", "--target", "{target}"], "--scenario t2 takes exactly one --source and one --target"),
    (["--scenario", "star", "--target", "{target}", "--target", "{target}", "--target", "{target}"], "at most 3"),
    (["--grid", "1x1"], "at least 2 views"),
])
def test_generate_scenario_mismatches_are_user_errors(capsys, samples, generate_argv, no_model_build, extra, match,
                                                      tmp_path):
    _, target = samples("person_blue_walking")
    argv = generate_argv + [a.format(target=target) for a in extra] + ["--out", str(tmp_path / "out")]
    assert match in handler_error(capsys, argv)


@pytest.fixture
def sizeless_openpose_target(tmp_path):
    """OpenPose output (no canvas_width/height) measured on a 176x256 image."""
    path = tmp_path / "openpose_target.json"
    path.write_text(json.dumps({"people": [{"pose_keypoints_2d": FLAT}]}))
    return path


def test_sizeless_openpose_target_asks_for_pose_size(capsys, samples, sizeless_openpose_target, no_model_build,
                                                     tmp_path):
    image, pose = samples("person_blue_front")
    line = handler_error(capsys, ["generate", "--source", str(image), str(pose), "--target",
                                  str(sizeless_openpose_target), "--out", str(tmp_path / "out")])
    assert str(sizeless_openpose_target) in line and "--pose-size WIDTHxHEIGHT" in line


def test_pose_size_gives_the_target_keypoints_their_image_size(samples, sizeless_openpose_target, tmp_path):
    image, pose = samples("person_blue_front")
    out = tmp_path / "out"
    argv = ["generate", "--source", str(image), str(pose), "--target", str(sizeless_openpose_target),
            "--pose-size", "176x256", "--tile-size", "64x64", "--steps", "1", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    assert json.loads((out / "result.json").read_text())["targets"] == ["target_tile3.png"]


def test_pose_size_is_width_by_height():
    from imagpose.cli import build_parser

    args = build_parser().parse_args(["generate", "--source", "a", "b", "--target", "c", "--pose-size", "176x256"])
    assert args.pose_size == (176, 256)


# ----------------------------------------------------------------------------- 7. verify-official
def test_verify_official_on_a_folder_without_fixtures(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    line = handler_error(capsys, ["verify-official", str(tmp_path)])
    assert str(tmp_path) in line and "no official fixture" in line
    line = handler_error(capsys, ["verify-official", str(tmp_path / "absent")])
    assert "not found" in line


@pytest.fixture
def broken_unet_fixture(fixture_root, tmp_path):
    copy = tmp_path / "unet_tiny"
    shutil.copytree(fixture_root / "unet_tiny", copy)
    return copy


@pytest.mark.parametrize("damage, match", [
    (lambda f: (f / "config.json").write_text("{not json"), "config.json is not valid JSON"),
    (lambda f: (f / "config.json").write_text("{}"), "config.json has no 'unet3d_config'"),
    (lambda f: (f / "pose_guider.safetensors").unlink(), "no pose_guider"),
    (lambda f: (f / "outputs.safetensors").write_bytes(b"\x08\0\0\0\0\0\0\0{broken}"), "outputs.safetensors"),
])
def test_verify_official_on_a_broken_fixture(capsys, broken_unet_fixture, damage, match):
    damage(broken_unet_fixture)
    line = handler_error(capsys, ["verify-official", str(broken_unet_fixture)])
    assert match in line and str(broken_unet_fixture) in line


def test_verify_official_on_a_pipeline_fixture_without_its_unet(fixture_root, tmp_path):
    from imagpose.verify import verify_fixture

    copy = tmp_path / "pipeline_tiny"
    shutil.copytree(fixture_root / "pipeline_tiny", copy)
    with pytest.raises(InputFileError, match="UNet weights"):
        verify_fixture(copy)
    shutil.rmtree(copy / "vae")
    with pytest.raises(InputFileError, match="vae"):
        verify_fixture(copy)



@pytest.mark.parametrize("argv", [
    ["generate", "--seed", "1180591620717411303424"],
    ["train", "make-data", "--out", "x", "--seed", "-1"],
    ["train", "all", "--out", "x", "--eval-seed", str(2**63)],
    ["serve", "--weights-seed", "1.5"],
])
def test_seeds_outside_the_one_rule_are_refused_while_parsing(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "expected an integer in [0, 2**63 - 1]" in capsys.readouterr().err


@pytest.mark.parametrize("seed", [-1, 2**63, 2**80, 1.5, True])
def test_the_seed_rule_holds_for_requests_and_training_configs(seed):
    from imagpose.canvas import validate_request
    from imagpose.train.config import load_config

    with pytest.raises(InvalidArgumentError, match=r"seed must be an integer"):  # the config's type check or the rule
        load_config("tiny", [f"seed={seed}"])
    request = PoseRequest(views=[View.source("a.png", "a.json"), View.target("b.json")], grid=(1, 2), seed=seed)
    with pytest.raises(InvalidArgumentError, match=r"seed must be an integer in \[0, 2\*\*63 - 1\]"):
        validate_request(request)


def test_train_all_refuses_a_run_folder_without_resume_before_touching_it(tmp_path, capsys):
    (tmp_path / "timing.json").write_text('{"data": 31.0, "vae": 5104.0}')
    assert main(["train", "all", "--out", str(tmp_path), "--no-progress"]) != 0
    assert "already holds a run (timing.json); continue it with --resume" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timing.json"]


@pytest.mark.parametrize("content", ["[1, 2]", '{"vae": "long"}', "{not json", "\udcff"])
def test_train_all_resume_names_a_damaged_timing_file(tmp_path, capsys, content):
    (tmp_path / "timing.json").write_text(content, encoding="utf-8", errors="surrogateescape")
    assert main(["train", "all", "--out", str(tmp_path), "--resume", "--no-progress"]) != 0
    error = capsys.readouterr().err
    assert f"{tmp_path / 'timing.json'} is damaged" in error and "delete it and run again with --resume" in error


@pytest.mark.parametrize("command", [["demo"], ["generate", "--source", "a.png", "a.json", "--target", "b.json"]])
def test_sampling_flags_that_conflict_with_the_step_count_stop_before_the_model_loads(tmp_path, capsys, command):
    """An interval that guides none of the steps is refused before anything is loaded: the missing model folder
    would be the error otherwise."""
    argv = [*command, "--model", str(tmp_path / "no-model"), "--steps", "2", "--guidance-interval", "0.6:0.9",
            "--out", str(tmp_path / "out")]
    assert main(argv) != 0
    error = capsys.readouterr().err
    assert "guidance_interval (0.6, 0.9) covers none of the 2 steps" in error and "no-model" not in error
    assert not (tmp_path / "out").exists()
