"""Output safety at the library level: outputs go INTO a folder, beside what is already there, each file moved
into place at the end with normal permissions; any error leaves the folder exactly as it was; broken pipeline
folders are clear errors naming the file."""

import errno
import os
import re
import shutil

import pytest
import torch
from PIL import Image

from imagpose import IMAGPosePipeline
from imagpose.convert import convert_official_checkpoints
from imagpose.errors import InputFileError, OutputLocationError
from imagpose.io import OutputFolder, WeightsFileError, atomic_file, load_state_dict_file, write_json
from imagpose.models import FLCTokenizer
from imagpose.presets import get_preset


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def _image():
    return Image.new("RGB", (8, 8), "red")


def _hidden(folder) -> list[str]:
    """Hidden entries other than the user's .git: a staging folder or backup left behind."""
    return [name for name in os.listdir(folder) if name.startswith(".") and name != ".git"]


def _kept(before: dict, after: dict) -> dict:
    return {key: value for key, value in after.items() if key in before}


# ----------------------------------------------------------------------------- existing contents survive
def test_save_pretrained_writes_beside_the_users_files(tiny_pipe, user_folder, tree):
    before = tree(user_folder)
    tiny_pipe.save_pretrained(user_folder)
    first = tree(user_folder)
    assert _kept(before, first) == before
    assert (user_folder / "model_index.json").is_file() and (user_folder / "unet" / "config.json").is_file()
    tiny_pipe.save_pretrained(user_folder)  # again: replaces its own files (same names), keeps the user's
    assert tree(user_folder).keys() == first.keys()
    assert not _hidden(user_folder)
    IMAGPosePipeline.from_pretrained(user_folder)


def test_save_pretrained_refuses_an_existing_file(tiny_pipe, tmp_path, tree):
    target = tmp_path / "model"
    target.write_text("a file of the user's")
    before = tree(tmp_path)
    with pytest.raises(OutputLocationError, match=f"{re.escape(str(target))}.*is a file"):
        tiny_pipe.save_pretrained(target)
    assert tree(tmp_path) == before


def test_convert_writes_into_a_folder_that_holds_other_files(user_folder, tmp_path, tree):
    checkpoint = tmp_path / "patch-1.pth"
    torch.save(FLCTokenizer(**get_preset("tiny").flc).state_dict(), checkpoint)
    before = tree(user_folder)
    convert_official_checkpoints(user_folder, patch=checkpoint, preset="tiny")
    assert _kept(before, tree(user_folder)) == before
    assert FLCTokenizer.from_pretrained(user_folder / "flc_tokenizer")
    assert not _hidden(user_folder)


# ----------------------------------------------------------------------------- the OutputFolder mechanism
def test_output_folder_merges_sub_folders_file_by_file(user_folder, tree):
    before = tree(user_folder)
    with OutputFolder(user_folder) as out:
        out.save_image("photos/generated.png", _image())
        out.write_json("result.json", {"seed": 1})
        out.path("models/unet/weights.bin").write_bytes(b"\0")
    after = tree(user_folder)
    assert _kept(before, after) == before
    assert set(after) - set(before) == {"photos/generated.png", "result.json", "models", "models/unet",
                                        "models/unet/weights.bin"}
    assert out.target == user_folder


def test_output_folder_writes_through_a_symlinked_folder_and_into_dot(tmp_path, monkeypatch):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    with OutputFolder(link) as out:
        out.write_json("a.json", {"a": 1})
    assert link.is_symlink() and (real / "a.json").is_file()
    monkeypatch.chdir(real)
    with OutputFolder(".") as out:
        out.write_json("b.json", {"b": 2})
    with OutputFolder("../real") as out:
        out.write_json("c.json", {"c": 3})
    assert sorted(os.listdir(real)) == ["a.json", "b.json", "c.json"]


@pytest.mark.parametrize("error", [RuntimeError("a bug while writing"), KeyboardInterrupt()])
def test_an_error_while_writing_leaves_the_folder_as_it_was(user_folder, tree, error):
    before = tree(user_folder)
    with pytest.raises(type(error)), OutputFolder(user_folder) as out:
        out.write_json("result.json", {"seed": 1})
        out.save_image("photos/holiday.png", _image())
        raise error
    assert tree(user_folder) == before
    new = user_folder / "new" / "deeper"
    with pytest.raises(type(error)), OutputFolder(new) as out:
        out.write_json("result.json", {"seed": 1})
        raise error
    assert tree(user_folder) == before  # the folders it created are gone too


def test_the_staging_folder_of_a_killed_run_is_removed_by_the_next_run(tmp_path):
    import socket
    import subprocess
    import sys

    from imagpose.io import STAGING_PREFIX

    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:64]
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)  # a process that has exited (its pid is not reused this soon)
    orphaned = tmp_path / f"{STAGING_PREFIX}{host}-{dead_pid}-abc123"
    live = tmp_path / f"{STAGING_PREFIX}{host}-{os.getppid()}-def456"  # a running process's: left alone
    other_host = tmp_path / f"{STAGING_PREFIX}elsewhere-{dead_pid}-ghi789"  # cannot be checked from here
    for folder in (orphaned, live, other_host):
        (folder / "unet").mkdir(parents=True)
        (folder / "unet" / "half.safetensors").write_bytes(b"x")
    with OutputFolder(tmp_path) as out:
        out.write_json("result.json", {"ok": True})
    assert not orphaned.exists() and live.is_dir() and other_host.is_dir()
    assert (tmp_path / "result.json").is_file()


def test_a_folder_where_a_file_goes_is_refused_before_anything_moves(user_folder, tree):
    before = tree(user_folder)
    with pytest.raises(OutputLocationError, match="photos.*folder"), OutputFolder(user_folder) as out:
        out.write_json("a.json", {})
        out.write_json("photos", {})
    assert tree(user_folder) == before


def test_disk_full_while_moving_into_place_rolls_back(user_folder, tree, monkeypatch):
    (user_folder / "a.json").write_text('"from an earlier run"\n')
    before = tree(user_folder)
    real_replace = os.replace

    def replace(src, dst, **kwargs):  # fault injection: the file system fails the second output's rename
        if os.path.basename(dst) == "z.png":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OutputLocationError, match=f"{re.escape(str(user_folder))}.*(No space left|disk is full)"):
        with OutputFolder(user_folder) as out:
            out.write_json("a.json", {"new": True})
            out.save_image("z.png", _image())
    assert tree(user_folder) == before
    assert not _hidden(user_folder)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_while_flushing_is_a_clear_error(user_folder, tree, monkeypatch, code):
    before = tree(user_folder)

    def fsync(fd):  # fault injection: delayed allocation reports a full disk or quota when flushing
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OutputLocationError, match=f"{re.escape(str(user_folder))}.*{os.strerror(code)}"):
        with OutputFolder(user_folder) as out:
            out.save_image("canvas.png", _image())
    assert tree(user_folder) == before


def test_a_full_disk_inside_a_writer_is_a_clear_error(user_folder, tree):
    before = tree(user_folder)
    full = f"{re.escape(str(user_folder))}.*No space left"
    with pytest.raises(OutputLocationError, match=full), OutputFolder(user_folder):
        with open("/dev/full", "wb") as device:  # the kernel's always-full device: a real ENOSPC
            device.write(b"canvas")
    assert tree(user_folder) == before


def test_a_read_only_folder_is_a_clear_error(read_only_folder, tree):
    before = tree(read_only_folder)
    refused = f"{re.escape(str(read_only_folder))}.*(not permitted|denied|[Rr]ead-only)"
    for target in (read_only_folder, read_only_folder / "new"):
        with pytest.raises(OutputLocationError, match=refused), OutputFolder(target) as out:
            out.write_json("result.json", {})
    assert tree(read_only_folder) == before


@pytest.mark.parametrize("target", ["/proc/imagpose-out", "/dev/null/out"])
def test_an_uncreatable_location_is_refused_on_entry(target):
    with pytest.raises(OutputLocationError, match=re.escape(target)):
        OutputFolder(target).__enter__()


def test_names_must_stay_inside_the_folder(tmp_path):
    with OutputFolder(tmp_path) as out:
        for name in ("../escape.txt", "/etc/passwd", "a/../../b"):
            with pytest.raises(ValueError, match="inside"):
                out.path(name)
    assert not _hidden(tmp_path)


# ----------------------------------------------------------------------------- permissions
def test_outputs_get_umask_modes(tiny_pipe, tmp_path, umask_027, tree):
    stale = tmp_path / "replaced.json"
    stale.write_text("{}")
    stale.chmod(0o600)
    target = tmp_path / "new" / "pipe"
    tiny_pipe.save_pretrained(target)
    write_json(stale, {"a": 1})
    with atomic_file(tmp_path / "plain.bin") as handle:
        handle.write(b"\0")
    entries = tree(tmp_path)
    assert entries, "nothing written"
    for name, (kind, _, mode) in entries.items():
        assert mode == (0o750 if kind == "dir" else 0o640), (name, oct(mode))


# ----------------------------------------------------------------------------- strict JSON
def test_write_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        write_json(tmp_path / "result.json", {"seconds": float("nan")})
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- loading pipeline folders
@pytest.fixture(scope="module")
def saved_pipe(tmp_path_factory, tiny_pipe):
    folder = tmp_path_factory.mktemp("saved") / "pipe"
    tiny_pipe.save_pretrained(folder)
    return folder


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble(path):
    path.write_text('{"_class_name": "IMAGPoseUNet",')


def _remove(path):
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


@pytest.mark.parametrize(("name", "damage", "problem"), [
    ("unet/diffusion_pytorch_model.safetensors", _truncate, "truncated or corrupt"),
    ("image_encoder/model.safetensors", _truncate, "truncated or corrupt"),
    ("vae/diffusion_pytorch_model.safetensors", _remove, "no weights file"),
    ("unet/config.json", _garble, "not valid JSON"),
    ("image_encoder/config.json", _garble, "not valid JSON"),
    ("scheduler/scheduler_config.json", _garble, "not valid JSON"),
    ("model_index.json", _garble, "not valid JSON"),
    ("vae/config.json", _remove, "missing"),
    ("pose_guider", _remove, "missing"),
    ("model_index.json", _remove, "not an imagpose pipeline folder"),
])
def test_a_damaged_pipeline_folder_is_a_clear_error(saved_pipe, tmp_path, name, damage, problem):
    folder = tmp_path / "pipe"
    shutil.copytree(saved_pipe, folder)
    damage(folder / name)
    with pytest.raises(InputFileError, match=problem) as info:
        IMAGPosePipeline.from_pretrained(folder)
    message = str(info.value)
    assert str(folder / name) in message and ("save_pretrained" in message or "convert" in message), message


def test_a_missing_pipeline_folder_is_a_clear_error(tmp_path):
    with pytest.raises(InputFileError, match=re.escape(str(tmp_path / "nope"))):
        IMAGPosePipeline.from_pretrained(tmp_path / "nope")


def test_a_truncated_safetensors_weight_file_is_named(saved_pipe, tmp_path):
    path = tmp_path / "unet.safetensors"
    shutil.copyfile(saved_pipe / "unet" / "diffusion_pytorch_model.safetensors", path)
    _truncate(path)
    with pytest.raises(WeightsFileError, match=re.escape(str(path))):
        load_state_dict_file(path)

