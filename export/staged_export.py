"""One component's export, written beside the folder's other files and committed all at once.

    with staged_export(out_dir, "unet") as staged:
        path = staged.path("unet.onnx")      # write the graph (and "unet.onnx.data") here
        staged.sidecar = {...}               # what unet.json will say

The files are written into an :class:`~imagpose.io.OutputFolder` staging folder inside ``out_dir``. When the block
ends without error: the old sidecar is removed first (what it described is about to be replaced), a leftover
``<component>.onnx.data`` the new export does not have is removed, the staged files move into place (atomic per
file, put back if a move fails; mode ``0o666 & ~umask``), and the new sidecar is written last: the sidecar is the
commit marker, so it only ever describes complete files. After an error or Ctrl-C in the block nothing of the new
export is left behind and the previous one is untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from imagpose.io import OutputFolder, write_json


@dataclass
class StagedExport:
    component: str
    folder: OutputFolder
    sidecar: dict | None = field(default=None)

    def path(self, name: str) -> Path:
        """Where to write ``name`` (relative to the export folder) now."""
        return self.folder.path(name)


@contextlib.contextmanager
def staged_export(out_dir: str | Path, component: str) -> Iterator[StagedExport]:
    """Stage the files of ``component``'s export and commit them into ``out_dir`` (see the module docstring); the
    block must set ``sidecar``."""
    out_dir = Path(out_dir)
    with OutputFolder(out_dir) as folder:
        staged = StagedExport(component, folder)
        yield staged
        if staged.sidecar is None:
            raise RuntimeError(f"the export of {component} set no sidecar; nothing was committed")
        (out_dir / f"{component}.json").unlink(missing_ok=True)  # invalidate the old export first
        data = f"{component}.onnx.data"
        if not folder.path(data).exists():
            (out_dir / data).unlink(missing_ok=True)
    write_json(out_dir / f"{component}.json", staged.sidecar)  # the commit marker, written last
