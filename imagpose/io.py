"""Safe file I/O: weight loading without arbitrary unpickling, and atomic writes of files and folders."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from .errors import InputFileError


class WeightsFileError(InputFileError):
    """A weight file is missing, unreadable, or would need unsafe unpickling."""


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


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``target``; on success it replaces ``target`` in one rename.

    On any exception the temporary folder is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    backup = None
    if target.exists():
        backup = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, backup)
    os.replace(tmp, target)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary file next to ``target`` and rename it over ``target`` when the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, data) -> None:
    with atomic_file(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")
