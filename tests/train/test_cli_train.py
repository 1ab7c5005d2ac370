"""`imagpose train make-data | vae | eval`: each runs end to end on a tiny dataset and prints its summary; a bad
value or a bad dataset is one line (exit code 2), never a traceback."""

import json
import shutil
import subprocess
import sys

import pytest

from imagpose import build_pipeline
from imagpose.autoencoders import load_autoencoder
from imagpose.cli import main
from imagpose.presets import get_preset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "data"
    assert main(["train", "make-data", "--out", str(root), "--identities", "6", "--seed", "3", "--size", "48x48",
                 "--views", "3", "--test-fraction", "0.34"]) == 0
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "model"
    build_pipeline("tiny").save_pretrained(folder)
    return folder


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI in-process; assert a user error (exit 2, one ``imagpose ...: error:`` line, no traceback)."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refuses the value while parsing, after printing its usage
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("imagpose")]
    assert code == 2 and "Traceback" not in err and len(lines) == 1 and ": error: " in lines[0], err
    return lines[0]


def test_make_data_writes_the_dataset_and_prints_a_summary(dataset, capsys, tmp_path):
    meta = json.loads((dataset / "dataset.json").read_text())
    assert (meta["identities"], meta["views_per_identity"], meta["image_size"], meta["seed"]) == (6, 3, [48, 48], 3)
    assert len(meta["test"]) == 2 and len(json.loads((dataset / "train.json").read_text())) == 4
    assert main(["train", "make-data", "--out", str(tmp_path / "d"), "--identities", "2", "--views", "2",
                 "--size", "32x32"]) == 0
    out = capsys.readouterr().out
    assert "2 identities (1 train, 1 test), 4 images of 32x32 (HxW), seed 0" in out and "poses: " in out


def test_vae_trains_and_prints_the_held_out_psnr(dataset, capsys, tmp_path):
    assert main(["train", "vae", "--data", str(dataset), "--out", str(tmp_path / "vae"), "--steps", "2",
                 "--batch-size", "4", "--no-progress"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "vae" / "vae_report.json").read_text())
    assert f"tiles {report['psnr']['tiles']:.2f} dB (6)" in out and "canvas" in out
    assert "latents normalised per channel (means " in out and "held out" in out  # the preset's AutoencoderTiny
    assert type(load_autoencoder(tmp_path / "vae")).__name__ == get_preset("tiny").vae_class  # loads as its class


def test_train_vae_decoder_of_trains_the_decoder_of_a_trained_autoencoder(dataset, capsys, tmp_path):
    assert main(["train", "vae", "--data", str(dataset), "--out", str(tmp_path / "vae"), "--steps", "1",
                 "--batch-size", "4", "--no-progress"]) == 0
    assert main(["train", "vae", "--data", str(dataset), "--out", str(tmp_path / "decoder"), "--steps", "2",
                 "--batch-size", "4", "--decoder-of", str(tmp_path / "vae"), "--no-progress"]) == 0
    assert "latent std: " in capsys.readouterr().out
    report = json.loads((tmp_path / "decoder" / "vae_report.json").read_text())
    assert report["decoder_only"] and report["settings"]["decoder_steps"] == 2
    assert report["latent_std"]["calibration_factor"] is None  # the trained autoencoder's scale, not recalibrated


def test_eval_prints_the_table_and_writes_its_outputs(dataset, model_dir, capsys, tmp_path):
    assert main(["train", "eval", "--model", str(model_dir), "--data", str(dataset), "--out", str(tmp_path / "e"),
                 "--steps", "2", "--max-items", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["counts"] == {"items": 2, "identities": 2} and summary["settings"]["steps"] == 2
    for name in ("model", "untrained", "copy_source", "model beats copy"):
        assert f"\n{name} " in out
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["figure.png", "scores.csv", "strips", "summary.json"]


@pytest.mark.parametrize("argv,message", [
    (["make-data", "--out", "{tmp}/d", "--identities", "0"],
     "argument --identities: expected an integer >= 1, got '0'"),
    (["make-data", "--out", "{tmp}/d", "--identities", "2", "--test-fraction", "1"],
     "argument --test-fraction: expected a number in [0, 1), got '1'"),
    (["make-data", "--out", "{tmp}/d", "--identities", "2", "--size", "16x16"], "size 16x16 (HxW) is too small"),
    (["vae", "--data", "{data}", "--out", "{tmp}/v", "--batch-size", "6"],
     "argument --batch-size: expected an integer >= 4 and a multiple of 4, got '6'"),
    (["vae", "--data", "{data}", "--out", "{tmp}/v", "--lr", "nan"], "argument --lr: expected a number > 0"),
    (["vae", "--data", "{tmp}/missing", "--out", "{tmp}/v"], "Dataset folder {tmp}/missing does not exist"),
    (["vae", "--data", "{tmp}/no_test", "--out", "{tmp}/v"], "{tmp}/no_test/test.json is missing"),
    (["eval", "--model", "{model}", "--data", "{tmp}/missing"], "Dataset folder {tmp}/missing does not exist"),
    (["eval", "--model", "{model}", "--data", "{tmp}/no_test"], "{tmp}/no_test/test.json is missing"),
    (["eval", "--model", "{tmp}", "--data", "{data}"], "is not an imagpose pipeline folder"),
    (["eval", "--model", "{model}", "--data", "{data}", "--steps", "0"], "argument --steps: num_inference_steps"),
    (["eval", "--model", "{model}", "--data", "{data}", "--kernel", "2"], "kernel must be a positive odd number"),
    (["eval", "--model", "{model}", "--data", "{data}", "--device", "cuda:99"], "--device cuda:99"),
])
def test_bad_input_is_one_line(dataset, model_dir, capsys, tmp_path, argv, message):
    shutil.copytree(dataset, tmp_path / "no_test", ignore=shutil.ignore_patterns("test.json"))
    fill = dict(tmp=tmp_path, data=dataset, model=model_dir)
    line = one_line_error(capsys, ["train", *(a.format(**fill) for a in argv)])
    assert message.format(**fill) in line, line
    assert not any((tmp_path / name).exists() for name in ("d", "v"))


def test_the_modules_import_the_trainer_only_when_run():
    """`imagpose --help` builds every parser: the train subcommands must not import imagpose.train to do it."""
    code = ("import sys; import imagpose.cli.train_data, imagpose.cli.train_vae, imagpose.cli.train_eval; "
            "print(sorted(m for m in sys.modules if m.startswith('imagpose.train')))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
