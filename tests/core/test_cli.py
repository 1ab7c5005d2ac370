import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from imagpose.cli import SUBCOMMANDS, build_parser, main


def test_every_subcommand_and_flag_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {m.NAME for m in SUBCOMMANDS}
    def check(name, parser):
        for action in parser._actions:
            if action.dest != "help":
                assert action.help, f"{name} --{action.dest} has no help"
            choices = getattr(action, "choices", None)
            if isinstance(choices, dict):
                for child_name, child in choices.items():
                    check(f"{name} {child_name}", child)

    for name, child in sub.choices.items():
        check(name, child)


def test_console_script_help():
    proc = subprocess.run([sys.executable, "-m", "imagpose", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "verify-official" in proc.stdout


def test_env_json(capsys):
    assert main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"] and "cuda_available" in info


def test_generate_from_files(tmp_path, samples):
    image, pose = samples("person_blue_front")
    _, target = samples("person_blue_walking")
    argv = ["generate", "--source", str(image), str(pose), "--target", str(target), "--tile-size", "64x64",
            "--steps", "2", "--no-progress"]
    assert main(argv + ["--out", str(tmp_path / "gen")]) == 0
    result = json.loads((tmp_path / "gen" / "result.json").read_text())
    assert result["targets"] == ["target_tile3.png"]  # T2: the target sits in the last tile
    assert main(argv + ["--eta", "1", "--out", str(tmp_path / "eta")]) == 0  # DDIM noise reaches the sampler
    assert json.loads((tmp_path / "eta" / "result.json").read_text())["sampling"]["eta"] == 1.0
    deterministic, noisy = (Image.open(tmp_path / d / "canvas.png") for d in ("gen", "eta"))
    assert np.abs(np.asarray(deterministic, dtype=int) - np.asarray(noisy, dtype=int)).max() > 0


def test_generate_reports_bad_input_without_partial_output(tmp_path, samples, capsys):
    image, pose = samples("person_blue_front")
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    out = tmp_path / "gen"
    code = main(["generate", "--source", str(image), str(pose), "--target", str(bad), "--steps", "1",
                 "--no-progress", "--out", str(out)])
    assert code == 2
    assert "not a readable image" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("argv", [["generate", "--grid", "2by2"], ["generate", "--tile-size", "big"]])
def test_malformed_sizes_are_argparse_errors(argv):
    with pytest.raises(SystemExit):
        main(argv + ["--source", "a", "b", "--target", "c"])
