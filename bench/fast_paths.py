"""IMAGPose's fast paths in the benchmark: the runtime each one runs on, and their output parity.

``backend_factories(backends, work_dir)`` maps each fast path to ``factory(method, setting) -> Runtime | None``
(None: the method's own PyTorch modules, e.g. with the Triton CVA switched on). The runtimes come from
:func:`imagpose.export.runtime.prepare_runtime`: ONNX exports and TensorRT engines are written under
``work_dir`` (cached by weights and options), one folder per backend, preset and shape bucket.
``fast_path_parity`` is :func:`imagpose.export.parity.fast_path_parity`.
"""

from __future__ import annotations

from pathlib import Path

from imagpose.export import ShapeBucket
from imagpose.export.parity import fast_path_parity
from imagpose.export.runtime import prepare_runtime

__all__ = ["backend_factories", "fast_path_parity"]


def backend_factories(backends, work_dir) -> dict:
    """``{backend: factory(method, setting)}`` for every fast path in ``backends`` ("eager" needs none). Exported
    graphs and engines run in the setting's precision (fp16 as released on a GPU, fp32 on CPU)."""

    def exported(name: str):
        def factory(method, setting):
            bucket = ShapeBucket(1, *method.layout(setting).padded_tile, 2, 2)
            folder = Path(work_dir) / name / method.preset / bucket.label()
            return prepare_runtime(name, method.pipe, folder, bucket, dtype=setting.precision)

        return factory

    def triton_cva(method, setting):
        method.unet.set_cva_backend("triton")
        return None

    factories = {"onnxruntime": exported("onnxruntime"), "tensorrt": exported("tensorrt"), "triton": triton_cva}
    return {name: factories[name] for name in backends if name in factories}
