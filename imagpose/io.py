"""Safe file I/O: weight loading without arbitrary unpickling, checks of model folders, and output writing that
never loses a user's file.

Writing a run's outputs::

    with OutputFolder("outputs/demo") as out:         # creates the folder if needed, fails now if unwritable
        out.save_image("t2/canvas.png", image)
        out.write_json("summary.json", summary)
        unet.save_pretrained(out.path("unet"))        # any other writer: a path inside the staging folder

- Outputs go INTO the folder, beside what is already there. The only things replaced are files with the names
  this run writes; folders are never replaced (sub-folders are merged file by file), and a symlink to a folder
  is written through.
- Entering creates the folder (and missing parents) and a hidden staging folder ``.imagpose-staging-*`` inside
  it, so a location that cannot be written fails at once, before any expensive work.
- The run writes into the staging folder. When the block ends, every staged file is flushed to disk and moved
  into place with ``os.replace`` (atomic per file); if a move fails, the files moved so far are put back. After
  an error or Ctrl-C in the block, the staging folder and the folders the run created are removed: the target
  is exactly as it was. A staging folder left by a process that was killed outright (SIGKILL, power loss) is
  removed by the next run that writes into the same folder on the same host.
- Files get the permissions of any new file (``0o666 & ~umask``), folders ``0o777 & ~umask``.
- A problem of the location (a file where a folder is needed, permission denied, read-only file system, disk
  full, quota exceeded) raises :class:`~imagpose.errors.OutputLocationError` naming the path.

``atomic_file`` and ``write_json`` write one file the same way (a new file beside it, renamed over it);
``write_json`` writes strict JSON: NaN and infinities are refused, never written as non-standard tokens.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import re
import secrets
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import torch

from .errors import IMAGPoseError, InputFileError, OutputLocationError
from .json_parsing import parse_json

STAGING_PREFIX = ".imagpose-staging-"
# ".imagpose-staging-<host>-<pid>-<random>": a later run on the same host removes the staging folder of a process
# that no longer exists (one killed with SIGKILL had no chance to)
_STAGING_OWNER = re.compile(rf"^{re.escape(STAGING_PREFIX)}(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)-")


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:64] or "host"


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_orphaned_staging(folder: Path) -> None:
    """Remove the staging folders in ``folder`` left by processes of this host that no longer exist."""
    host = _host_tag()
    try:
        children = list(os.scandir(folder))
    except OSError:
        return
    for child in children:
        owner = _STAGING_OWNER.match(child.name)
        if (owner and owner["host"] == host and int(owner["pid"]) != os.getpid()
                and not _process_exists(int(owner["pid"])) and child.is_dir(follow_symlinks=False)):
            shutil.rmtree(child.path, ignore_errors=True)


class WeightsFileError(InputFileError):
    """A weight file is missing, unreadable, or would need unsafe unpickling."""


class MissingInputFileError(InputFileError, FileNotFoundError):
    """An input file or folder that does not exist (also a ``FileNotFoundError``)."""


# ----------------------------------------------------------------------------- reading
def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a flat ``{name: tensor}`` dict from ``.safetensors`` or a ``.pth``/``.pt``/``.bin`` torch file.

    Torch files are read with ``weights_only=True``: a pickle that needs arbitrary Python objects is refused.
    A ``{"state_dict": ...}`` or ``{"module": ...}`` wrapper (DeepSpeed/Lightning style) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"Weight file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises several private error types
            raise WeightsFileError(f"{path} is not a readable safetensors file ({exc}).") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if "global" in line.lower()), None)
        if reason is None:
            raise WeightsFileError(f"{path} is not a readable PyTorch weight file ({exc}).") from exc
        raise WeightsFileError(
            f"Refusing to load {path}: it needs unpickling arbitrary Python objects, which can run code "
            f"({reason}). Re-save it as a plain state_dict of tensors, or convert it to .safetensors in a "
            "trusted environment."
        ) from exc
    except Exception as exc:
        raise WeightsFileError(f"{path} is not a readable PyTorch weight file ({exc}).") from exc
    for wrapper in ("state_dict", "module"):
        if isinstance(obj, dict) and set(obj) == {wrapper}:
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsFileError(f"{path} does not hold a flat state_dict of tensors.")
    return dict(obj)


def read_json(path: str | os.PathLike, fix: str):
    """The JSON value in ``path``, or an InputFileError naming the file, the problem and ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputFileError(f"{path} is missing; {fix}.")
    try:
        return parse_json(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{path} is not valid JSON ({exc}); {fix}.") from exc
    except OSError as exc:
        raise InputFileError(f"{path} cannot be read ({exc.strerror}); {fix}.") from exc


def read_json_file(path: str | os.PathLike, fix: str) -> dict:
    """The JSON object in ``path`` (see :func:`read_json`); anything but an object is an InputFileError."""
    data = read_json(path, fix)
    if not isinstance(data, dict):
        raise InputFileError(f"{path} does not hold a JSON object; {fix}.")
    return data


def check_safetensors_file(path: str | os.PathLike, fix: str) -> None:
    """Raise an InputFileError naming ``path`` unless it is a complete safetensors file.

    ``safe_open`` parses the header and checks that the file covers every tensor, without reading the data.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError) as exc:
        raise InputFileError(f"{path} is truncated or corrupt ({exc}); {fix}.") from exc


def check_model_folder(folder: str | os.PathLike, config_name: str, weights_name: str | None, fix: str) -> None:
    """Check a ``save_pretrained`` folder before a diffusers/transformers loader reads it (their errors name
    neither the file nor the fix): the config is a JSON object, and the safetensors weights (one file, or the
    shards of ``<weights_name>.index.json``) are present and complete."""
    folder = Path(folder)
    if folder.is_file():
        raise InputFileError(f"{folder} is a file; a model folder (save_pretrained output: {config_name} and the "
                             f"weights) is needed here; {fix}.")
    if not folder.is_dir():
        raise MissingInputFileError(f"{folder} is missing; {fix}.")
    read_json_file(folder / config_name, fix)
    if weights_name is None:
        return
    weights, index = folder / weights_name, folder / f"{weights_name}.index.json"
    if index.is_file() and not weights.is_file():
        shards = sorted(set(read_json_file(index, fix).get("weight_map", {}).values()))
        if not shards:
            raise InputFileError(f"{index} lists no weight files; {fix}.")
        files = [folder / shard for shard in shards]
    else:
        files = [weights]
    for file in files:
        if not file.is_file():
            raise MissingInputFileError(f"{file} is missing: {folder} has no weights file; {fix}.")
        check_safetensors_file(file, fix)


# ----------------------------------------------------------------------------- writing
_HINTS = {
    errno.EACCES: "choose a folder you can write to",
    errno.EPERM: "choose a folder you can write to",
    errno.EROFS: "choose a location on a writable file system",
    errno.ENOSPC: "free some space or choose another location",
    errno.EDQUOT: "free some space or choose another location",
    errno.EFBIG: "choose a file system that allows larger files",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another location",
}
# Errors only writing produces: raised inside an OutputFolder block, they are the location's problem.
_WRITE_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _location_error(doing: str, path, exc: OSError) -> OutputLocationError:
    hint = _HINTS.get(exc.errno, "choose another output location")
    error = OutputLocationError(f"Cannot {doing} {path}: {exc.strerror or exc}; {hint}.")
    error.errno = exc.errno
    return error


def _concerns(exc: OSError, path: Path) -> bool:
    """Whether ``exc`` is about ``path``, something inside it, or one of its parents (not, say, an input)."""
    if exc.filename is None:
        return False
    name, path = Path(os.fsdecode(exc.filename)).absolute(), path.absolute()
    return name == path or path in name.parents or name in path.parents


def _json_text(data) -> str:
    # serialized before any file is opened, so a refused value (NaN, inf, an object) writes nothing
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def refuse_non_folder(target: str | os.PathLike) -> None:
    """Refuse an output location that exists and is not a folder (a file, a device, a broken link)."""
    root = Path(target).absolute()
    if os.path.lexists(root) and not root.is_dir():
        what = "is a file" if root.is_file() else "exists and is not a folder"
        raise OutputLocationError(f"{target} {what}; outputs go into a folder: choose a folder "
                                  "(it is created if missing).")


def make_output_folder(target: str | os.PathLike) -> Path:
    """Create the output folder ``target`` (and missing parents) for a writer that commits its own files
    atomically; an existing folder is used as it is. Errors name the location and the fix."""
    refuse_non_folder(target)
    path = Path(target)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _location_error("create", path, exc) from exc
    return path


class OutputFolder:
    """The outputs of one run, written into ``target`` beside what is already there (see the module docstring).

    Use as a context manager; inside the block write with :meth:`save_image`, :meth:`write_json` or any writer
    given :meth:`path`. Everything lands in ``target`` when the block ends without error, and nothing does
    otherwise.
    """

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)
        self._root = self.target.absolute()  # not resolved: ".." and symlinks mean what the kernel says
        self._staging: Path | None = None
        self._created: list[Path] = []  # folders this run created, outermost first
        self._file_mode: int | None = None  # measured on entry

    # ------------------------------------------------------------------ writing in the block
    def path(self, name: str = "") -> Path:
        """Where to write ``name`` (relative, "/"-separated) now; it is moved to ``target/name`` at the end.
        Its parent folders are created; ``path()`` is the staging folder itself (for ``save_pretrained``)."""
        if self._staging is None:
            raise RuntimeError("OutputFolder.path() is only valid inside its `with` block.")
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"Output name {name!r} must be a relative path inside the output folder.")
        path = self._staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def save_image(self, name: str, image, **params) -> None:
        """Save a PIL image as ``name`` (format from the extension)."""
        image.save(self.path(name), **params)

    def write_json(self, name: str, data) -> None:
        """Write ``data`` as strict JSON (NaN and infinities are refused)."""
        self.path(name).write_text(_json_text(data), encoding="utf-8")

    # ------------------------------------------------------------------ entering: create and check
    def __enter__(self) -> OutputFolder:
        refuse_non_folder(self.target)
        missing = []
        folder = self._root
        while not os.path.lexists(folder) and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        try:
            for folder in reversed(missing):
                os.mkdir(folder)
                self._created.append(folder)
            remove_orphaned_staging(self._root)
            self._staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{_host_tag()}-{os.getpid()}-",
                                                  dir=self._root))
            self._file_mode = self._new_file_mode()
        except BaseException as exc:
            self._discard()
            if not isinstance(exc, OSError):
                raise
            raise _location_error("create the output folder" if missing else "write to", self.target, exc) from exc
        return self

    def _new_file_mode(self) -> int:
        """The mode a new file gets here (``0o666 & ~umask``, default ACLs included), measured, not assumed."""
        probe = self._staging / "mode-probe"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        mode = stat.S_IMODE(probe.stat().st_mode)
        probe.unlink()
        return mode

    # ------------------------------------------------------------------ leaving: commit or discard
    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                self._commit()
                self._created = []  # committed: the folders made on entry now hold outputs
            elif isinstance(exc, OSError) and not isinstance(exc, IMAGPoseError) and (
                    exc.errno in _WRITE_ERRNOS or (exc.errno in (errno.EACCES, errno.EPERM)
                                                   and _concerns(exc, self._root))):
                raise _location_error("write the outputs to", self.target, exc) from exc
        finally:
            self._discard()
        return False

    def _discard(self) -> None:
        """Remove what this run created: the staging folder, then the (empty) folders made on entry."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):  # not empty: someone else wrote there meanwhile; keep it
                os.rmdir(folder)
        self._created = []

    def _staged(self) -> tuple[list[PurePosixPath], list[PurePosixPath]]:
        """The staged folders (parents first) and files, relative to the staging folder."""
        folders, files = [], []
        for folder, subfolders, names in os.walk(self._staging):
            base = PurePosixPath(Path(folder).relative_to(self._staging))
            subfolders.sort()
            for name in subfolders:
                (files if os.path.islink(os.path.join(folder, name)) else folders).append(base / name)
            files += [base / name for name in sorted(names)]
        return folders, files

    def _commit(self) -> None:
        folders, files = self._staged()
        for name in folders:  # check every conflict before anything moves
            if os.path.lexists(self._root / name) and not (self._root / name).is_dir():
                raise OutputLocationError(f"{self.target / name} exists and is not a folder, but the outputs have "
                                          "a folder of that name; move it away or choose another output folder.")
        for name in files:
            if (self._root / name).is_dir():
                raise OutputLocationError(f"{self.target / name} is a folder, but the outputs have a file of that "
                                          "name; move it away or choose another output folder.")
        try:
            for name in files:  # flushed before the renames, so a full disk shows here, not in a moved file
                staged = self._staging / name
                if not staged.is_symlink():
                    os.chmod(staged, self._file_mode)
                    _fsync_file(staged)
        except OSError as exc:
            raise _location_error("write the outputs to", self.target, exc) from exc
        self._move_into_place(folders, files)

    def _move_into_place(self, folders, files) -> None:
        created, moved = [], []  # moved: (destination, backup of the file it replaced, or None)
        token = secrets.token_hex(4)
        try:
            for name in folders:
                if not (self._root / name).is_dir():
                    os.mkdir(self._root / name)
                    created.append(self._root / name)
            for name in files:
                destination = self._root / name
                backup = None
                if os.path.lexists(destination):
                    backup = destination.with_name(f".{destination.name}.imagpose-backup-{token}")
                moved.append((destination, backup))
                if backup is not None:
                    _keep_backup(destination, backup)
                _move(self._staging / name, destination, token)
        except BaseException as exc:
            for destination, backup in reversed(moved):  # put back what was there
                with contextlib.suppress(FileNotFoundError):
                    if backup is None:
                        os.unlink(destination)  # created by this run
                    elif os.path.lexists(backup):
                        os.replace(backup, destination)
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
            if isinstance(exc, OSError):
                raise _location_error("write the outputs to", self.target, exc) from exc
            raise
        for _, backup in moved:
            if backup is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(backup)


def _keep_backup(path: Path, backup: Path) -> None:
    """Keep the file about to be replaced under a hidden name, to put it back if a later move fails: a hard
    link (``path`` stays in place), or a rename on file systems without hard links."""
    try:
        os.link(path, backup, follow_symlinks=False)
    except OSError:
        os.replace(path, backup)


def _move(source: Path, destination: Path, token: str) -> None:
    try:
        os.replace(source, destination)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        # the destination's folder is on another file system (a symlink or mount inside the target):
        # copy beside it, then rename, so the replacement is still atomic
        copy = destination.with_name(f".{destination.name}.imagpose-copy-{token}")
        try:
            shutil.copy2(source, copy)
            _fsync_file(copy)
            os.replace(copy, destination)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(copy)
            raise


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a new file beside ``target`` and rename it over ``target`` when the block succeeds (flushed to disk
    first). It gets the mode of any new file, ``0o666 & ~umask``; after an error nothing is left behind, and a
    full disk or read-only location raises OutputLocationError."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp-{secrets.token_hex(4)}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # not mkstemp: its files are 0o600
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, IMAGPoseError) and (
                exc.errno in _WRITE_ERRNOS or (exc.errno in (errno.EACCES, errno.EPERM)
                                               and _concerns(exc, target.parent))):
            raise _location_error("write", target, exc) from exc
        raise


def write_json(path: str | os.PathLike, data) -> None:
    """Write ``data`` to ``path`` as strict JSON (NaN and infinities are refused), atomically."""
    text = _json_text(data)
    with atomic_file(path, "w") as handle:
        handle.write(text)
