"""TensorRT backend: engines from ``imagpose export trt`` behind the pipeline's Runtime interface.

Static engines (one per shape bucket) get pre-allocated CUDA I/O buffers bound once with
``set_tensor_address``; a call copies its inputs into them and runs ``execute_async_v3`` on a torch CUDA
stream, optionally as a captured CUDA graph (``cuda_graph=True``, one graph per static engine, captured on the
second call). Dynamic engines set the input shapes per call. A request whose shapes no engine covers gets an
error naming the buckets that exist and the command that builds the missing one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..components import CONTRACTS
from ..onnx_export import ExportError
from ..trt_build import import_tensorrt
from .base import ExportedRuntime


def select_engine(entries: list[dict], shapes: dict[str, tuple[int, ...]], component: str) -> dict:
    """The first engine whose profile covers ``shapes`` (static engines are listed first)."""
    def covers(entry):
        for name, shape in shapes.items():
            low, _, high = entry["profile"][name]
            if len(shape) != len(low) or any(s < lo or s > hi for s, lo, hi in zip(shape, low, high)):
                return False
        return True

    for entry in sorted(entries, key=lambda e: e.get("bucket") is None):
        if covers(entry):
            return entry
    ranges = [f"{e['engine']}: {e['profile']}" for e in entries] or ["(none built)"]
    raise ExportError(
        f"No {component} engine covers input shapes {shapes}; engines: {'; '.join(ranges)}. Build one with "
        "`imagpose export trt --bucket BATCH,TILE_HxTILE_W,ROWSxCOLS` (or --dynamic).")


@dataclass
class _LoadedEngine:
    entry: dict
    engine: object
    context: object
    inputs: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    graph: object = None
    calls: int = 0


class TensorRTBackend(ExportedRuntime):
    name = "tensorrt"

    def __init__(self, engine_dir: str | Path, device: str = "cuda", cuda_graph: bool = False):
        self.trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise ExportError("The tensorrt backend needs a CUDA GPU; use backend 'onnxruntime' or 'torch' here.")
        self.engine_dir, self.device, self.cuda_graph = Path(engine_dir), torch.device(device), cuda_graph
        index_path = self.engine_dir / "engines.json"
        if not index_path.is_file():
            raise ExportError(f"{self.engine_dir} has no engines.json; build engines with `imagpose export trt`.")
        self.entries: dict[str, list[dict]] = {}
        for entry in json.loads(index_path.read_text())["engines"]:
            self.entries.setdefault(entry["component"], []).append(entry)
        self.runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        self.loaded: dict[str, _LoadedEngine] = {}
        self.stream = torch.cuda.Stream(self.device)
        grids = {tuple((e["bucket"] or {}).get(k) for k in ("rows", "cols")) for e in self.entries.get("unet", [])}
        self.grids = {g for g in grids if None not in g}

    @classmethod
    def for_pipeline(cls, pipe, engine_dir, **kwargs) -> TensorRTBackend:
        backend = cls(engine_dir, **kwargs)
        from ..onnx_export import fingerprint

        for component, entries in backend.entries.items():
            sidecar = Path(entries[0]["onnx"]).with_suffix(".json")
            if sidecar.is_file() and json.loads(sidecar.read_text())["weights"] != fingerprint(pipe, component)[
                    "weights"]:
                raise ExportError(f"The {component} engines were built from other weights than this pipeline; "
                                  "re-export and rebuild them.")
        return backend

    def _load(self, entry: dict) -> _LoadedEngine:
        key = entry["engine"]
        if key in self.loaded:
            return self.loaded[key]
        path = self.engine_dir / entry["engine"]
        engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ExportError(f"TensorRT cannot load {path} (built for another GPU or TensorRT version?); rebuild it.")
        loaded = _LoadedEngine(entry, engine, engine.create_execution_context())
        if entry.get("bucket") is not None:  # static: allocate and bind every I/O buffer once
            for name in self._io_names(engine):
                shape = tuple(engine.get_tensor_shape(name))
                dtype = self._torch_dtype(engine.get_tensor_dtype(name))
                buffer = torch.empty(shape, dtype=dtype, device=self.device)
                is_input = engine.get_tensor_mode(name) == self.trt.TensorIOMode.INPUT
                (loaded.inputs if is_input else loaded.outputs)[name] = buffer
                loaded.context.set_tensor_address(name, buffer.data_ptr())
        self.loaded[key] = loaded
        return loaded

    @staticmethod
    def _io_names(engine) -> list[str]:
        return [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]

    def _torch_dtype(self, trt_dtype):
        table = {self.trt.float32: torch.float32, self.trt.float16: torch.float16, self.trt.int32: torch.int32,
                 self.trt.int64: torch.int64, self.trt.bool: torch.bool}
        if hasattr(self.trt, "bfloat16"):
            table[self.trt.bfloat16] = torch.bfloat16
        return table[trt_dtype]

    def _execute(self, loaded: _LoadedEngine) -> None:
        stream = self.stream.cuda_stream
        if self.cuda_graph and loaded.entry.get("bucket") is not None:
            if loaded.graph is None and loaded.calls >= 1:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream):
                    loaded.context.execute_async_v3(self.stream.cuda_stream)
                loaded.graph = graph
            if loaded.graph is not None:
                loaded.graph.replay()
                return
        if not loaded.context.execute_async_v3(stream):
            raise ExportError(f"TensorRT execution of {loaded.entry['engine']} failed.")

    def _run(self, component: str, *inputs: torch.Tensor) -> torch.Tensor:
        contract = CONTRACTS[component]
        shapes = {name: tuple(t.shape) for name, t in zip(contract.input_names, inputs)}
        loaded = self._load(select_engine(self.entries.get(component, []), shapes, component))
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            if loaded.entry.get("bucket") is not None:
                for name, tensor in zip(contract.input_names, inputs):
                    loaded.inputs[name].copy_(tensor, non_blocking=True)
                outputs = loaded.outputs
            else:
                outputs = {}
                for name, tensor in zip(contract.input_names, inputs):
                    dtype = self._torch_dtype(loaded.engine.get_tensor_dtype(name))
                    staged = tensor.to(self.device, dtype).contiguous()
                    loaded.inputs[name] = staged
                    loaded.context.set_input_shape(name, tuple(staged.shape))
                    loaded.context.set_tensor_address(name, staged.data_ptr())
                for name in contract.output_names:
                    shape = tuple(loaded.context.get_tensor_shape(name))
                    dtype = self._torch_dtype(loaded.engine.get_tensor_dtype(name))
                    outputs[name] = torch.empty(shape, dtype=dtype, device=self.device)
                    loaded.context.set_tensor_address(name, outputs[name].data_ptr())
            self._execute(loaded)
            loaded.calls += 1
            result = outputs[contract.output_names[0]].clone()
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return result.to(inputs[0].dtype if inputs[0].is_floating_point() else torch.float32)

    def supported_grids(self) -> set[tuple[int, int]]:
        return self.grids
