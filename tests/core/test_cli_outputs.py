"""Output safety of the command line: ``--out`` writes into the folder beside what is already there, refuses a
location it cannot write before loading any model, and Ctrl-C leaves the folder exactly as it was."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from imagpose.cli import main
from imagpose.models import FLCTokenizer
from imagpose.presets import get_preset

GENERATE_OUTPUTS = {"target_tile3.png", "canvas.png", "result.json"}  # T2: the target sits in the last tile


@pytest.fixture
def patch_checkpoint(tmp_path):
    path = tmp_path / "patch-1.pth"
    torch.save(FLCTokenizer(**get_preset("tiny").flc).state_dict(), path)
    return path


def _kept(before: dict, after: dict) -> dict:
    return {key: value for key, value in after.items() if key in before}


def test_generate_writes_beside_the_users_files(generate_argv, user_folder, tree):
    before = tree(user_folder)
    assert main(generate_argv + ["--out", str(user_folder)]) == 0
    after = tree(user_folder)
    assert _kept(before, after) == before
    assert set(after) - set(before) == GENERATE_OUTPUTS
    assert main(generate_argv + ["--seed", "7", "--out", str(user_folder)]) == 0  # its own files are replaced
    assert set(tree(user_folder)) == set(after)
    assert json.loads((user_folder / "result.json").read_text())["seed"] == 7


def test_demo_writes_beside_the_users_files(user_folder, tree, capsys):
    before = tree(user_folder)
    assert main(["demo", "--out", str(user_folder), "--steps", "1", "--no-progress"]) == 0
    after = tree(user_folder)
    assert _kept(before, after) == before
    summary = json.loads((user_folder / "summary.json").read_text())
    names = [s["name"] for s in summary["scenarios"]]
    assert names == ["t1", "t2", "t3", "imagpose_star", "mixed", "grid_2x3", "tile_128x128"]
    for item in summary["scenarios"]:
        assert {f"{item['name']}/canvas.png", f"{item['name']}/inputs.png", *item["targets"]} <= set(after)
    assert "overview.png" in after  # every scenario's inputs and canvas in one image
    assert str(user_folder) in capsys.readouterr().out


def test_convert_writes_beside_the_users_files(patch_checkpoint, user_folder, tree):
    before = tree(user_folder)
    assert main(["convert", "--patch", str(patch_checkpoint), "--preset", "tiny", "--out", str(user_folder)]) == 0
    after = tree(user_folder)
    assert _kept(before, after) == before
    assert {"flc_tokenizer/config.json", "flc_tokenizer/diffusion_pytorch_model.safetensors"} <= set(after)


def test_generate_into_dot_and_through_a_symlinked_folder(generate_argv, user_folder, tmp_path, monkeypatch):
    link = tmp_path / "link"
    link.symlink_to(user_folder, target_is_directory=True)
    assert main(generate_argv + ["--out", str(link)]) == 0
    assert link.is_symlink() and GENERATE_OUTPUTS <= set(os.listdir(user_folder))
    monkeypatch.chdir(user_folder / "photos")
    assert main(generate_argv + ["--out", "."]) == 0
    assert sorted(os.listdir(user_folder / "photos")) == sorted({"holiday.png", *GENERATE_OUTPUTS})
    assert (user_folder / "photos" / "holiday.png").read_bytes() == b"not ours"


def test_outputs_get_umask_modes(generate_argv, tmp_path, tree):
    old = os.umask(0o027)
    try:
        assert main(generate_argv + ["--out", str(tmp_path / "new" / "out")]) == 0
    finally:
        os.umask(old)
    modes = {name: mode for name, (kind, _, mode) in tree(tmp_path).items()}
    assert modes == {"new": 0o750, "new/out": 0o750, **{f"new/out/{name}": 0o640 for name in GENERATE_OUTPUTS}}


@pytest.mark.parametrize("command", ["generate", "demo", "convert"])
@pytest.mark.parametrize("where", ["existing file", "under a file", "/proc", "read-only folder"])
def test_an_unwritable_out_fails_at_once(command, where, generate_argv, patch_checkpoint, tmp_path, tree, capsys,
                                         request):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    out = {"existing file": notes, "under a file": notes / "out", "/proc": "/proc/imagpose-out"}.get(where)
    if out is None:
        out = request.getfixturevalue("read_only_folder")
    argv = {"generate": generate_argv, "demo": ["demo", "--steps", "1", "--no-progress"],
            "convert": ["convert", "--patch", str(patch_checkpoint), "--preset", "tiny"]}[command]
    before = tree(tmp_path)
    start = time.perf_counter()
    code = main(argv + ["--out", str(out)])
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 2, err
    assert seconds < 1.0, f"took {seconds:.2f} s: the location must be checked before any model is loaded"
    assert re.search(rf"error: .*{re.escape(str(out))}", err) and "Traceback" not in err, err
    assert tree(tmp_path) == before


def test_bad_input_after_the_location_check_leaves_the_folder_as_it_was(generate_argv, user_folder, tree, capsys):
    bad = user_folder.parent / "bad.png"
    bad.write_text("not an image")
    before = tree(user_folder)
    argv = list(generate_argv)
    argv[argv.index("--target") + 1] = str(bad)
    assert main(argv + ["--out", str(user_folder)]) == 2
    assert "not a readable image" in capsys.readouterr().err
    assert tree(user_folder) == before


def _read_until(stream, marker: bytes, seen: bytearray, found: threading.Event) -> None:
    for chunk in iter(lambda: os.read(stream.fileno(), 4096), b""):
        seen.extend(chunk)
        if marker in seen:
            found.set()


def test_ctrl_c_while_denoising_leaves_the_folder_as_it_was(generate_argv, user_folder, tree):
    before = tree(user_folder)
    argv = [arg for arg in generate_argv if arg != "--no-progress"]  # the progress bar tells when denoising starts
    argv[argv.index("--steps") + 1] = "500"
    proc = subprocess.Popen([sys.executable, "-m", "imagpose", *argv, "--out", str(user_folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen, denoising = bytearray(), threading.Event()
    reader = threading.Thread(target=_read_until, args=(proc.stderr, b"denoising", seen, denoising), daemon=True)
    reader.start()
    try:
        assert denoising.wait(timeout=300), seen.decode(errors="replace")
        assert not GENERATE_OUTPUTS & set(os.listdir(user_folder))
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    reader.join(timeout=10)
    assert code == 130, seen.decode(errors="replace")
    assert b"interrupted" in seen
    assert tree(user_folder) == before
