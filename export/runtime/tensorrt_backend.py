"""TensorRT backend: engines built by ``build_engines`` behind the pipeline's Runtime interface.

Engines are deserialised by polygraphy (``engine_from_bytes``). Static engines (one per shape bucket) get
pre-allocated CUDA I/O buffers bound once with ``set_tensor_address``; a call copies its inputs into them and
runs ``execute_async_v3`` on a torch CUDA stream, optionally as a captured CUDA graph (``cuda_graph=True``,
one graph per static engine, captured on the second call) - polygraphy's ``TrtRunner`` allocates its outputs
per call, which a CUDA graph cannot replay, so this path is our own, as in NVIDIA's diffusion demo. Dynamic
engines run through polygraphy's ``TrtRunner``, which sets the input shapes and allocates the outputs per call.

Before anything runs, every engine of ``engines.json`` is checked: built by this TensorRT version for this GPU,
and its file unchanged since the build (SHA-256). ``for_pipeline`` also checks the weights fingerprint and
configs recorded in each engine's sidecar against the pipeline. A request whose shapes no engine covers gets
an error naming the engines that exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..components import CONTRACTS
from ..digests import changed_files
from ..onnx_export import ExportError, fingerprint
from ..trt_build import BuildTarget, import_tensorrt
from .base import ExportedRuntime, export_hint


def read_engine_index(engine_dir: str | Path, target: BuildTarget) -> dict[str, list[dict]]:
    """The engines of ``engine_dir/engines.json`` by component, each checked: built for ``target``, file unchanged."""
    engine_dir = Path(engine_dir)
    index_path = engine_dir / "engines.json"
    if not index_path.is_file():
        raise ExportError(f"{engine_dir} has no engines.json; build engines with `imagpose export trt` "
                          "(or imagpose.export.runtime.prepare_runtime).")
    entries: dict[str, list[dict]] = {}
    for entry in json.loads(index_path.read_text())["engines"]:
        built = BuildTarget(entry["key_fields"]["tensorrt"], entry["key_fields"]["gpu"],
                            tuple(entry["key_fields"]["compute_capability"]))
        if built != target:
            raise ExportError(f"{engine_dir / entry['engine']} was built with {built.describe()}; this is "
                              f"{target.describe()}. Engines only run where they were built: rebuild them here "
                              "with `imagpose export trt`.")
        problems = changed_files(engine_dir, entry["files"])
        if problems:
            raise ExportError(f"{'; '.join(problems)}. Rebuild the engines with `imagpose export trt`.")
        entries.setdefault(entry["component"], []).append(entry)
    return entries


def check_engines_match(entries: dict[str, list[dict]], pipe, engine_dir: str | Path) -> None:
    """Raise ExportError if an engine was built from other weights or another config than ``pipe`` (from what
    each engine's sidecar recorded, so this works after the ONNX files are gone)."""
    for component, component_entries in entries.items():
        ours = fingerprint(pipe, component)
        for entry in component_entries:
            if entry["weights"] != ours["weights"] or entry["configs"] != ours["configs"]:
                raise ExportError(f"{Path(engine_dir) / entry['engine']} was built from other weights or another "
                                  "config than this pipeline; re-export the ONNX files and rebuild the engines.")


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
        f"No {component} engine covers input shapes {shapes}; engines: {'; '.join(ranges)}. Build one for this "
        "shape with `imagpose export trt --bucket BATCH,TILE_HxTILE_W,ROWSxCOLS` (or --dynamic).")


def _torch_dtype(trt_dtype) -> torch.dtype:
    from polygraphy.datatype import DataType

    return DataType.to_dtype(DataType.from_dtype(trt_dtype, source_module="tensorrt"), "torch")


@dataclass
class _LoadedEngine:
    entry: dict
    engine: object
    dtypes: dict  # I/O tensor name -> torch dtype
    context: object = None  # static engines: our execution context and bound buffers
    inputs: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    graph: object = None
    calls: int = 0
    runner: object = None  # dynamic engines: a polygraphy TrtRunner


class TensorRTBackend(ExportedRuntime):
    name = "tensorrt"

    def __init__(self, engine_dir: str | Path, device: str = "cuda", cuda_graph: bool = False):
        import_tensorrt()
        self.device = torch.device(device)
        self.target = BuildTarget.current(self.device)
        self.engine_dir, self.cuda_graph = Path(engine_dir), cuda_graph
        self.entries = read_engine_index(self.engine_dir, self.target)
        self.loaded: dict[str, _LoadedEngine] = {}
        self.stream = torch.cuda.Stream(self.device)
        grids = {tuple((e["bucket"] or {}).get(k) for k in ("rows", "cols")) for e in self.entries.get("unet", [])}
        self.grids = {g for g in grids if None not in g}

    def components(self) -> set[str]:
        return set(self.entries)

    @classmethod
    def for_pipeline(cls, pipe, engine_dir, **kwargs) -> TensorRTBackend:
        """Open ``engine_dir`` and check that every engine was built from this pipeline's weights and config."""
        backend = cls(engine_dir, **kwargs)
        check_engines_match(backend.entries, pipe, engine_dir)
        return backend

    def _load(self, entry: dict) -> _LoadedEngine:
        key = entry["engine"]
        if key in self.loaded:
            return self.loaded[key]
        trt = import_tensorrt()
        from polygraphy.backend.common import bytes_from_path
        from polygraphy.backend.trt import TrtRunner, engine_from_bytes
        from polygraphy.exception import PolygraphyException

        path = self.engine_dir / entry["engine"]
        try:
            engine = engine_from_bytes(bytes_from_path(str(path)))
        except PolygraphyException as exc:
            raise ExportError(f"TensorRT cannot load {path} ({exc}); rebuild it with `imagpose export trt`.") from exc
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        loaded = _LoadedEngine(entry, engine, {name: _torch_dtype(engine.get_tensor_dtype(name)) for name in names})
        if entry["bucket"] is None:
            loaded.runner = TrtRunner(engine)
            loaded.runner.activate()
        else:  # static: allocate and bind every I/O buffer once
            loaded.context = engine.create_execution_context()
            for name in names:
                shape = tuple(engine.get_tensor_shape(name))
                buffer = torch.empty(shape, dtype=loaded.dtypes[name], device=self.device)
                is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                (loaded.inputs if is_input else loaded.outputs)[name] = buffer
                loaded.context.set_tensor_address(name, buffer.data_ptr())
        self.loaded[key] = loaded
        return loaded

    def _execute_static(self, loaded: _LoadedEngine) -> None:
        if self.cuda_graph:
            if loaded.graph is None and loaded.calls >= 1:  # the first call runs plainly (lazy initialisation)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream):
                    loaded.context.execute_async_v3(self.stream.cuda_stream)
                loaded.graph = graph
            if loaded.graph is not None:
                loaded.graph.replay()
                return
        if not loaded.context.execute_async_v3(self.stream.cuda_stream):
            raise ExportError(f"TensorRT execution of {loaded.entry['engine']} failed; see the TensorRT log above.")

    def _run(self, component: str, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        contract = CONTRACTS[component]
        shapes = {name: tuple(t.shape) for name, t in zip(contract.input_names, inputs)}
        if component not in self.entries:  # a DeepCache branch whose engines were not built
            raise ExportError(f"{self.engine_dir} holds no {component} engine; {export_hint(component)}, then build "
                              "its engines with `imagpose export trt`.")
        loaded = self._load(select_engine(self.entries[component], shapes, component))
        if loaded.runner is not None:
            feed = {name: t.to(self.device, loaded.dtypes[name]).contiguous()
                    for name, t in zip(contract.input_names, inputs)}
            torch.cuda.current_stream(self.device).synchronize()  # the runner works on its own stream
            outputs = loaded.runner.infer(feed, copy_outputs_to_host=False)
            results = [outputs[name].clone() for name in contract.output_names]
        else:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                for name, tensor in zip(contract.input_names, inputs):
                    loaded.inputs[name].copy_(tensor, non_blocking=True)
                self._execute_static(loaded)
                loaded.calls += 1
                results = [loaded.outputs[name].clone() for name in contract.output_names]
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
        dtype = inputs[0].dtype if inputs[0].is_floating_point() else torch.float32
        results = tuple(result.to(dtype) for result in results)
        return results[0] if len(results) == 1 else results

    def supported_grids(self) -> set[tuple[int, int]]:
        return self.grids
