"""Runtime backends with the pipeline's :class:`~imagpose.runtime.Runtime` interface.

    torch         the reference (``imagpose.runtime.TorchRuntime``, the pipeline's default)
    onnxruntime   :class:`OnnxRuntimeBackend` over an ONNX export folder
    tensorrt      :class:`TensorRTBackend` over an engine folder (CUDA + tensorrt)

:func:`prepare_runtime` does everything for one backend: exports the ONNX files, builds the engines (both
cached, keyed on what they depend on), loads the runtime and checks it against the pipeline.
"""

from __future__ import annotations

from pathlib import Path

from imagpose.errors import InvalidArgumentError
from imagpose.runtime import RUNTIMES, Runtime

from ..components import COMPONENTS, ShapeBucket, deepcache_components


def runtime_folders(work_dir: str | Path, dtype: str) -> tuple[Path, Path]:
    """Where :func:`prepare_runtime` keeps the ONNX files and the TensorRT engines of one precision."""
    work_dir = Path(work_dir)
    return work_dir / "onnx" / dtype, work_dir / "engines" / dtype


def prepare_runtime(name: str, pipe, work_dir: str | Path, bucket: ShapeBucket, dtype: str = "fp32",
                    providers=None, deepcache_branches: tuple[int, ...] = ()) -> Runtime:
    """The runtime ``name`` for ``pipe``, ready to pass as ``pipe(..., runtime=...)``.

    Args:
        name: "torch" (the pipeline's own modules), "onnxruntime" or "tensorrt".
        pipe: the IMAGPosePipeline whose weights the runtime must reproduce.
        work_dir: exported files go to ``work_dir/onnx/<dtype>``, engines to ``work_dir/engines/<dtype>``; both
            are reused while the weights, configs, options (and for engines the ONNX files, build flags,
            TensorRT version and GPU) match, and redone otherwise.
        bucket: the shape traced at export (its grid is baked into the UNet) and, for TensorRT, the one static
            engine built per component.
        dtype: "fp32" or "fp16" precision of the exported graphs (and so of the engines).
        providers: ONNX Runtime execution providers; default CUDA for a pipeline on a GPU, else CPU.
        deepcache_branches: also export (and build) the DeepCache UNet graphs of these skip branches, for
            ``pipe(..., deepcache_interval=..., deepcache_branch=k)`` on this runtime.
    """
    if name not in RUNTIMES:
        raise InvalidArgumentError(f"Unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}.")
    if name == "torch":
        return pipe.torch_runtime()
    from ..onnx_export import ExportOptions, export_pipeline

    options = ExportOptions(dtype=dtype, bucket=bucket, deepcache_branches=tuple(deepcache_branches))
    onnx_dir, engine_dir = runtime_folders(work_dir, dtype)
    if name == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend, import_onnxruntime

        import_onnxruntime()  # fail early, with the install hint, before exporting anything
        export_pipeline(pipe, onnx_dir, options)
        if providers is None:
            providers = ["CUDAExecutionProvider" if pipe.device.type == "cuda" else "CPUExecutionProvider"]
        return OnnxRuntimeBackend.for_pipeline(pipe, onnx_dir, providers=providers)
    from ..trt_build import BuildOptions, BuildTarget, build_engines
    from .tensorrt_backend import TensorRTBackend

    target = BuildTarget.current(pipe.device)  # fail early (no tensorrt, no GPU), before exporting anything
    export_pipeline(pipe, onnx_dir, options)
    components = COMPONENTS + deepcache_components(options.deepcache_branches)
    build_engines(onnx_dir, engine_dir, BuildOptions(buckets=(bucket,), components=components), target=target)
    return TensorRTBackend.for_pipeline(pipe, engine_dir, device=pipe.device)
