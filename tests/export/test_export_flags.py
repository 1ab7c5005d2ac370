"""Bad values of the export commands' flags stop the command with one line naming the problem (exit 2), before a
model is exported; an --out that is a file is refused like every other command's."""

import pytest

from imagpose.cli import main
from imagpose.errors import InvalidArgumentError
from imagpose.export import ExportOptions, ShapeBucket, export_pipeline


def run(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse refuses a flag value with exit code 2
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("argv, message", [
    (["export", "onnx", "--batch", "0"], "--batch: expected an integer >= 1, got '0'"),
    (["export", "onnx", "--batch", "-1"], "--batch: expected an integer >= 1, got '-1'"),
    (["export", "triton", "--queue-delay-ms", "nan"], "--queue-delay-ms: expected a number >= 0, got 'nan'"),
    (["export", "triton", "--max-batch", "0"], "--max-batch: expected an integer >= 1"),
    (["export", "triton", "--instances", "-2"], "--instances: expected an integer >= 1"),
    (["export", "trt", "--onnx", "x", "--out", "y", "--workspace-gib", "0"], "--workspace-gib: expected a number > 0"),
    (["export", "trt", "--onnx", "x", "--out", "y", "--opt-level", "9"], "--opt-level: invalid choice"),
])
def test_bad_numbers_are_refused_while_parsing(argv, message, tmp_path, capsys):
    code, output = run([*argv, *(["--out", str(tmp_path / "o")] if "--out" not in argv else [])], capsys)
    assert code == 2 and message in output, output
    assert "Traceback" not in output and not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", [["export", "onnx"], ["export", "quantize"]])
def test_an_out_that_is_a_file_is_refused_and_kept(command, tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("the user's")
    code, output = run([*command, "--preset", "tiny", "--out", str(target)], capsys)
    assert code == 2 and f"{target} is a file; outputs go into a folder" in output, output
    assert target.read_text() == "the user's"


def test_quantize_refuses_tiles_too_small_for_the_model(tmp_path, capsys):
    pytest.importorskip("modelopt")
    code, output = run(["export", "quantize", "--preset", "tiny", "--tile-size", "1x1", "--out", str(tmp_path / "q")],
                       capsys)
    assert code == 2 and "this model needs tiles of at least" in output, output
    assert not (tmp_path / "q").exists()


def test_quantize_refuses_a_low_precision_reference(tmp_path, capsys):
    code, output = run(["export", "quantize", "--preset", "tiny", "--dtype", "bf16", "--out", str(tmp_path / "q")],
                       capsys)
    assert code == 2 and "quantization calibrates against the fp32 model" in output, output


@pytest.mark.parametrize("sizes", [dict(batch=0), dict(tile_height=-8), dict(rows=0), dict(cols=1.5),
                                   dict(batch=True)])
def test_a_shape_bucket_refuses_sizes_below_one(sizes):
    with pytest.raises(InvalidArgumentError, match="sizes must be integers >= 1"):
        ShapeBucket(**sizes)


def test_export_checks_the_tile_size_and_deepcache_branches_before_exporting(tiny_pipe, tmp_path):
    with pytest.raises(InvalidArgumentError, match="needs tiles of at least"):
        export_pipeline(tiny_pipe, tmp_path / "a", ExportOptions(bucket=ShapeBucket(1, 8, 8)))
    branches = tiny_pipe.unet.num_skip_branches
    with pytest.raises(InvalidArgumentError, match="branch"):
        export_pipeline(tiny_pipe, tmp_path / "b", ExportOptions(deepcache_branches=(0, branches)))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
