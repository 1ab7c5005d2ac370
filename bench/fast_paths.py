"""IMAGPose's fast paths in the benchmark: the runtime each one runs on, and their output parity.

``backend_factories(backends, work_dir)`` maps each fast path to ``factory(method, setting) -> Runtime | None``
(None: the method's own PyTorch modules, e.g. with the Triton CVA switched on). The runtimes come from
:func:`imagpose.export.runtime.prepare_runtime`: ONNX exports and TensorRT engines are written under
``work_dir`` (cached by weights and options), one folder per backend, preset (or model folder name) and shape bucket.
``fast_path_parity`` is :func:`imagpose.export.parity.fast_path_parity` (the tiny random-weight preset) or, given
a model folder, the same per-step comparison on that model, at its training tile size: with trained weights the
final SSIM measures what users would see.
"""

from __future__ import annotations

from pathlib import Path

from imagpose.export import ShapeBucket
from imagpose.export.parity import fast_path_parity as preset_parity
from imagpose.export.runtime import prepare_runtime
from imagpose.pipeline import IMAGPosePipeline
from imagpose.pretrained import trained_tile_size

PARITY_TILE = (64, 64)  # the preset parity's tiles, also used for a model folder that records none


def backend_factories(backends, work_dir) -> dict:
    """``{backend: factory(method, setting)}`` for every fast path in ``backends`` ("eager" needs none). Exported
    graphs and engines run in the setting's precision (fp16 as released on a GPU, fp32 on CPU)."""

    def exported(name: str):
        def factory(method, setting):
            bucket = ShapeBucket(1, *method.layout(setting).padded_tile, 2, 2)
            folder = Path(work_dir) / name / method.model_name / bucket.label()
            return prepare_runtime(name, method.pipe, folder, bucket, dtype=setting.precision)

        return factory

    def triton_cva(method, setting):
        method.unet.set_cva_backend("triton")
        return None

    factories = {"onnxruntime": exported("onnxruntime"), "tensorrt": exported("tensorrt"), "triton-cva": triton_cva}
    return {name: factories[name] for name in backends if name in factories}


def fast_path_parity(backends, device: str, work_dir, model_dir=None, steps: int = 10) -> dict:
    """Per-step SQNR and final SSIM/PSNR of each fast path vs fp32 torch (T2, one request), on the tiny preset or
    on the pipeline in ``model_dir``; the result names the model and the tile size."""
    if model_dir is None:
        return {**preset_parity(backends, device, work_dir, steps), "model": "tiny preset (random weights)",
                "tile_size": list(PARITY_TILE)}
    tile = trained_tile_size(model_dir) or PARITY_TILE
    pipe = IMAGPosePipeline.from_pretrained(model_dir).to(device)
    return {**preset_parity(backends, device, work_dir, steps, pipe=pipe, tile_size=tile), "model": str(model_dir),
            "tile_size": list(tile)}
