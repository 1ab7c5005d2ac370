import json
import subprocess
import sys

import pytest

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


def test_demo_writes_every_scenario(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "1", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    names = [s["name"] for s in summary["scenarios"]]
    assert names == ["t1", "t2", "t3", "imagpose_star", "mixed", "grid_2x3", "tile_128x128"]
    for item in summary["scenarios"]:
        assert (out / item["canvas"]).is_file()
        assert item["targets"] and all((out / t).is_file() for t in item["targets"])
    assert str(out) in capsys.readouterr().out


def test_generate_from_files(tmp_path, samples):
    image, pose = samples("person_blue_front")
    _, target = samples("person_blue_walking")
    out = tmp_path / "gen"
    code = main(["generate", "--source", str(image), str(pose), "--target", str(target), "--tile-size", "64x64",
                 "--steps", "1", "--no-progress", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["targets"] == ["target_tile3.png"]  # T2: the target sits in the last tile


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
