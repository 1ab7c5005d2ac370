"""Runtime backends with the pipeline's :class:`~imagpose.runtime.Runtime` interface.

    torch         the reference (``imagpose.runtime.TorchRuntime``, the pipeline's default)
    onnxruntime   :class:`OnnxRuntimeBackend` over an ``imagpose export onnx`` folder
    tensorrt      :class:`TensorRTBackend` over an ``imagpose export trt`` folder (CUDA + tensorrt)
"""

from __future__ import annotations

BACKENDS = ("torch", "onnxruntime", "tensorrt")


def load_backend(name: str, pipe, path=None, **kwargs):
    """A backend by name for ``pipe``; ``path`` is the ONNX or engine folder (not used by "torch")."""
    if name == "torch":
        return pipe.runtime()
    if name == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend.for_pipeline(pipe, path, **kwargs)
    if name == "tensorrt":
        from .tensorrt_backend import TensorRTBackend

        return TensorRTBackend.for_pipeline(pipe, path, **kwargs)
    raise ValueError(f"Unknown backend {name!r}; choose from {', '.join(BACKENDS)}.")
