"""Fixtures shared by the core tests: the user's folders of the output-safety tests, a generate command line."""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest


def _tree(root) -> dict:
    """Everything under ``root``, symlinks not followed: relative path -> (kind, bytes or link target, mode)."""
    root, entries = Path(root), {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                entries[str(path.relative_to(root))] = ("link", os.readlink(path), None)
            elif stat.S_ISDIR(info.st_mode):
                entries[str(path.relative_to(root))] = ("dir", None, stat.S_IMODE(info.st_mode))
            else:
                entries[str(path.relative_to(root))] = ("file", path.read_bytes(), stat.S_IMODE(info.st_mode))
    return entries


@pytest.fixture
def tree():
    return _tree


@pytest.fixture
def user_folder(tmp_path) -> Path:
    """A folder that already holds the user's files, a git repository and one file named like an output."""
    folder = tmp_path / "mine"
    (folder / ".git" / "objects").mkdir(parents=True)
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / "keep.txt").write_text("the user's notes")
    (folder / "photos").mkdir()
    (folder / "photos" / "holiday.png").write_bytes(b"not ours")
    return folder


@pytest.fixture
def read_only_folder(tmp_path) -> Path:
    """A folder where creating anything fails for real: mode 0o555, or, as root (which ignores permission bits),
    the immutable attribute (``chattr +i``)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    if os.geteuid() != 0:
        folder.chmod(0o555)
        def undo():
            folder.chmod(0o755)
    elif shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        def undo():
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        pytest.skip("running as root, where permission bits do not stop writes, and `chattr +i` (the immutable "
                    "attribute) is not available on this file system")
    probe = folder / "probe"
    try:
        probe.touch()
    except OSError:
        pass
    else:
        probe.unlink()
        undo()
        pytest.skip(f"{folder} stays writable here (neither mode bits nor the immutable attribute are enforced)")
    yield folder
    undo()


@pytest.fixture
def generate_argv(samples) -> list[str]:
    """`imagpose generate` on shipped samples at the smallest settings (T2, 64x64 tiles, 1 step); add --out."""
    image, pose = samples("person_blue_front")
    _, target = samples("person_blue_walking")
    return ["generate", "--source", str(image), str(pose), "--target", str(target), "--tile-size", "64x64",
            "--steps", "1", "--no-progress"]
