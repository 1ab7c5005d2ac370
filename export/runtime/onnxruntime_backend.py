"""ONNX Runtime backend: the exported components behind the pipeline's Runtime interface.

    backend = OnnxRuntimeBackend.for_pipeline(pipe, "onnx/", providers=["CPUExecutionProvider"])
    pipe(requests, runtime=runtime)

Providers are the user's choice: CPU here; ``CUDAExecutionProvider`` / ``TensorrtExecutionProvider`` with the
``[gpu]`` extra (onnxruntime-gpu, which must not be installed beside onnxruntime). Inputs are cast to the
exported dtype (the timestep stays fp32) and outputs back to the caller's dtype and device.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from imagpose.errors import MissingDependencyError

from ..components import COMPONENTS, CONTRACTS, deepcache_form
from ..onnx_export import ExportError, fingerprint, verify_export
from .base import ExportedRuntime, export_hint

_NP_TO_TORCH = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16}


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError(
            "The onnxruntime backend needs ONNX Runtime: pip install -c constraints.txt 'imagpose[cpu]' "
            "(CPU) or 'imagpose[gpu]' (CUDA; never both in one environment).") from exc
    return onnxruntime


class OnnxRuntimeBackend(ExportedRuntime):
    """One ONNX Runtime session per exported component (``out_dir/manifest.json`` of ``export_pipeline``).

    Every file is checked against the SHA-256 its export recorded before a session opens it.
    """

    name = "onnxruntime"

    def __init__(self, onnx_dir: str | Path, providers=("CPUExecutionProvider",), provider_options=None,
                 session_options=None, components: tuple[str, ...] | None = None):
        """``components``: the ones to open; default the six of :data:`COMPONENTS` and every DeepCache graph the
        manifest lists."""
        ort = import_onnxruntime()
        self.onnx_dir = Path(onnx_dir)
        manifest_path = self.onnx_dir / "manifest.json"
        if not manifest_path.is_file():
            raise ExportError(f"{self.onnx_dir} has no manifest.json; export it with `imagpose export onnx`.")
        self.manifest = json.loads(manifest_path.read_text())
        self.grid = tuple(self.manifest["grid"])
        if components is None:
            components = COMPONENTS + tuple(c for c in self.manifest["components"] if deepcache_form(c) is not None)
        available = ort.get_available_providers()
        missing = [p if isinstance(p, str) else p[0] for p in providers
                   if (p if isinstance(p, str) else p[0]) not in available]
        if missing:
            raise ExportError(f"ONNX Runtime providers {missing} are not available here (available: {available}); "
                              "install onnxruntime-gpu for CUDA/TensorRT providers.")
        if session_options is None:
            session_options = ort.SessionOptions()
            session_options.log_severity_level = 3  # errors only; ORT's optimizer warnings are noise here
        self.sessions, self.sidecars, self.input_types = {}, {}, {}
        for component in components:
            entry = self.manifest["components"].get(component)
            if entry is None:
                raise ExportError(f"{component} is not in {manifest_path}; export it with `imagpose export onnx`.")
            path = self.onnx_dir / entry["file"]
            self.sidecars[component] = verify_export(self.onnx_dir, component)
            try:
                session = ort.InferenceSession(str(path), sess_options=session_options, providers=list(providers),
                                               provider_options=provider_options)
            except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
                raise ExportError(f"ONNX Runtime cannot load {path}: {exc}. Re-export it with "
                                  "`imagpose export onnx --force`.") from exc
            self.sessions[component] = session
            self.input_types[component] = {i.name: _NP_TO_TORCH.get(i.type, torch.float32)
                                           for i in session.get_inputs()}

    def components(self) -> set[str]:
        return set(self.sessions)

    @classmethod
    def for_pipeline(cls, pipe, onnx_dir: str | Path, **kwargs) -> OnnxRuntimeBackend:
        """Open ``onnx_dir`` and check that every file was exported from this pipeline's weights and config."""
        backend = cls(onnx_dir, **kwargs)
        backend.check_matches(pipe)
        return backend

    def check_matches(self, pipe) -> None:
        """Raise ExportError if a file was exported from other weights or another config than ``pipe``."""
        for component, sidecar in self.sidecars.items():
            ours = fingerprint(pipe, component)
            if ours["weights"] != sidecar["weights"] or ours["configs"] != sidecar["configs"]:
                raise ExportError(
                    f"{self.onnx_dir / (component + '.onnx')} was exported from other weights or another config "
                    f"than this pipeline; re-export with `imagpose export onnx --out {self.onnx_dir}`.")

    def _run(self, component: str, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if component not in self.sessions:  # a DeepCache branch that was not exported
            raise ExportError(f"{self.onnx_dir} holds no {component}; {export_hint(component)}.")
        contract = CONTRACTS[component]
        types = self.input_types[component]
        feed = {name: np.ascontiguousarray(t.detach().to("cpu", types[name]).numpy())
                for name, t in zip(contract.input_names, inputs)}
        outputs = self.sessions[component].run(contract.output_names, feed)
        reference = inputs[0]
        dtype = reference.dtype if reference.is_floating_point() else torch.float32
        outputs = tuple(torch.from_numpy(out).to(reference.device, dtype) for out in outputs)
        return outputs[0] if len(outputs) == 1 else outputs

    def supported_grids(self) -> set[tuple[int, int]]:
        return {self.grid}
