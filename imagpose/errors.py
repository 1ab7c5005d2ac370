"""The errors that are the user's to fix.

Every exception imagpose raises for bad input, a missing file, a refused setting or a missing optional
dependency derives from :class:`IMAGPoseError`; its message names the problem and the fix. The command line
prints these as one line. Any other exception is a bug in imagpose (or in a library beneath it) and keeps
its traceback.
"""

from __future__ import annotations


class IMAGPoseError(Exception):
    """Base of every user-facing imagpose error."""


class InvalidArgumentError(IMAGPoseError, ValueError):
    """A setting outside its valid range (steps, guidance, eta, grid, backend or method names, ...)."""


class InputFileError(IMAGPoseError, ValueError):
    """An input file that is missing, unreadable, or not in a supported format."""


class OutputLocationError(IMAGPoseError, OSError):
    """An output location that cannot be written (a file where a folder is needed, read-only, disk full)."""


class MemoryLimitError(IMAGPoseError, MemoryError):
    """A request whose estimated memory exceeds the limit."""


class MissingDependencyError(IMAGPoseError, ImportError):
    """An optional dependency (onnxruntime, tensorrt, triton, ...) is not installed."""


class DeviceError(IMAGPoseError, RuntimeError):
    """A device that is not available here (``cuda`` without a CUDA build or GPU)."""
