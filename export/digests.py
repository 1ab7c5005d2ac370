"""Content digests: of the files an export writes (checked before a cached file is used) and of torch weights
(part of the export cache key).

Files: SHA-256 over the bytes, streamed by ``hashlib.file_digest``. SHA-256 rather than BLAKE2b because CPUs
with SHA extensions (x86 since Zen / Ice Lake, ARMv8) hash it about twice as fast (measured 1.06 vs
0.52 GiB/s on one core of an AMD EPYC). A file is hashed once per process: later checks compare its stat
signature (size, mtime, ctime, inode, device) with the one taken when it was hashed. Restoring the mtime
after an in-place edit still moves the ctime, which nothing but the kernel sets; a digest taken within
``RACY_SECONDS`` of the file's ctime is not reused (a same-tick edit could keep every stat field, as in
git's "racily clean" index entries).

Weights: SHA-256 over every state-dict tensor's name, dtype, shape and bytes, remembered per module object
until a tensor is replaced (``data_ptr``) or changed in place (autograd's version counter, bumped by every
in-place op, ``load_state_dict`` and optimiser steps). Writes through ``tensor.data`` bypass that counter:
call :func:`forget_weights_digests` after editing weights that way.
"""

from __future__ import annotations

import hashlib
import os
import time
import weakref
from pathlib import Path

import torch

RACY_SECONDS = 2.0  # the coarsest file timestamp granularity in common use (FAT); Linux filesystems tick in ms
_file_digests: dict[str, tuple[tuple, str]] = {}
_weights_digests: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _signature(stat: os.stat_result) -> tuple:
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev


def file_digest(path: str | Path) -> str:
    """SHA-256 hex digest of the file's bytes; reused while its stat signature is unchanged."""
    key = os.path.abspath(path)
    before = os.stat(key)
    remembered = _file_digests.get(key)
    if remembered is not None and remembered[0] == _signature(before):
        return remembered[1]
    started = time.time_ns()
    with open(key, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    after = os.stat(key)
    # on Windows st_ctime is the creation time, which an in-place edit does not move: never reuse there
    settled = before.st_ctime_ns < started - int(RACY_SECONDS * 1e9) and os.name != "nt"
    if settled and _signature(after) == _signature(before):
        _file_digests[key] = (_signature(after), digest)
    return digest


def file_record(path: Path) -> dict:
    """What the export sidecar stores about one written file."""
    return {"bytes": path.stat().st_size, "sha256": file_digest(path)}


def changed_files(folder: Path, records: dict[str, dict]) -> list[str]:
    """The files of ``records`` ({name: file_record}) that are missing from ``folder`` or differ from it."""
    problems = []
    for name, record in records.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{path} not found")
        elif path.stat().st_size != record["bytes"] or file_digest(path) != record["sha256"]:
            problems.append(f"{path} changed since it was written (its SHA-256 differs from the recorded one)")
    return problems


def combined_digest(records: dict[str, dict]) -> str:
    """One digest for a set of files (an ONNX graph and its external data)."""
    text = "\n".join(f"{name}:{records[name]['sha256']}" for name in sorted(records))
    return hashlib.sha256(text.encode()).hexdigest()


def _weights_token(module: torch.nn.Module) -> tuple | None:
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    if any(t.is_inference() for _, t in tensors):  # inference tensors have no version counter
        return None
    return tuple((name, id(t), t.data_ptr(), t._version, t.dtype, tuple(t.shape), str(t.device))
                 for name, t in tensors)


def hash_state_dict(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
    return digest.hexdigest()


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state dict, computed once per module until one of its tensors changes."""
    token = _weights_token(module)
    remembered = _weights_digests.get(module)
    if token is not None and remembered is not None and remembered[0] == token:
        return remembered[1]
    digest = hash_state_dict(module)
    if token is not None:
        _weights_digests[module] = (token, digest)
    return digest


def forget_weights_digests() -> None:
    """Drop every remembered weights digest (after editing weights through ``tensor.data``)."""
    _weights_digests.clear()
