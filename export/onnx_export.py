"""ONNX export of every component, cached and atomic.

    from imagpose.export import ExportOptions, export_pipeline
    results = export_pipeline(pipe, "onnx/", ExportOptions(dtype="fp16", opset=17))

Exporter: opset 17 goes through the TorchScript exporter (``dynamo=False``), whose GroupNorm form TensorRT
parses; opset >= 18 goes through the dynamo exporter (opset 17 through dynamo produces an invalid graph).
Every file carries metadata (versions, opset, config, a hash of weights + config + options) in
``metadata_props`` and in a ``<component>.json`` sidecar, which also records the SHA-256 of every written file
(``.onnx`` and ``.onnx.data``). A second export with nothing changed reuses the files after checking them
against those digests; any change of weights, config, options or versions, or of the files themselves,
re-exports. Files are written into a staging folder and moved into place, sidecar last (``staged_export.py``),
so a half-written graph is never taken for a valid one. The weights' digests are computed once per module
(``digests.py``), so a cache hit costs one read of the exported files, not a pass over the weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from imagpose.errors import IMAGPoseError, InvalidArgumentError
from imagpose.io import make_output_folder, write_json
from imagpose.sampling_config import DeepCacheConfig

from .components import (
    COMPONENTS,
    CONTRACTS,
    MAX_DEEPCACHE_BRANCHES,
    ComponentModule,
    ShapeBucket,
    axis_values,
    deepcache_components,
    deepcache_form,
    model_config,
    uses_grid,
)
from .digests import changed_files, file_record, weights_digest
from .passes import infer_and_check, initializer_bytes, name_dynamic_axes, run_passes, save_model
from .staged_export import staged_export

log = logging.getLogger("imagpose.export")
EXPORT_FORMAT_VERSION = 2  # bump when the export code changes what it writes
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26  # leave headroom under the 2 GiB protobuf limit for the graph itself


class ExportError(IMAGPoseError, RuntimeError):
    """An export that could not be produced or a cache that cannot be used."""


@dataclass(frozen=True)
class ExportOptions:
    """What to export and how.

    Attributes:
        dtype: "fp32" or "fp16" (weights and activations; the timestep input stays fp32).
        opset: 17 (TorchScript exporter, the GroupNorm form TensorRT parses) or >= 18 (dynamo exporter).
        dynamic: named dynamic axes (B, 2B, H, W, N, ...) instead of the sample bucket's static shape.
        bucket: the sample shape traced (and the static shape when ``dynamic`` is False); its grid is baked
            into the UNet graph.
        passes: named graph passes run after export (see ``passes.PASSES``).
        deepcache_branches: also export the DeepCache UNet pair of each of these skip branches
            (``unet_deepcache_full_b<k>``, ``unet_deepcache_shallow_b<k>``); none by default.
    """

    dtype: str = "fp32"
    opset: int = 17
    dynamic: bool = True
    bucket: ShapeBucket = field(default_factory=ShapeBucket)
    passes: tuple[str, ...] = ("cleanup_toposort", "fold_constants")
    deepcache_branches: tuple[int, ...] = ()

    def __post_init__(self):
        bad = [b for b in self.deepcache_branches
               if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < MAX_DEEPCACHE_BRANCHES]
        if bad:
            raise InvalidArgumentError(f"deepcache_branches must be integers in [0, {MAX_DEEPCACHE_BRANCHES}) (and "
                                       f"within the UNet's skip branches), got {bad}.")
        if self.dtype not in DTYPES:
            raise InvalidArgumentError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}.")
        if not 17 <= self.opset <= 23:
            raise InvalidArgumentError(f"opset must be in 17..23 (17 for TensorRT's GroupNorm form), got {self.opset}.")

    @property
    def exporter(self) -> str:
        return "torchscript" if self.opset == 17 else "dynamo"


@dataclass
class ExportResult:
    component: str
    path: Path
    data_path: Path | None
    reused: bool
    metadata: dict
    node_counts: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size + (self.data_path.stat().st_size if self.data_path else 0)


# ----------------------------------------------------------------------------- fingerprint / cache
SAVE_METADATA_KEYS = ("transformers_version", "dtype", "torch_dtype", "architectures")


def _component_config(module: torch.nn.Module) -> dict:
    config = getattr(module, "config", {})
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    # private keys ("_use_default_values", "_name_or_path", ...) vary run to run and say nothing of the graph;
    # transformers' save_pretrained writes "dtype" and "architectures" into the live config (the weights' dtype is
    # part of the weights digest already)
    config = {k: v for k, v in config.items() if not k.startswith("_") and k not in SAVE_METADATA_KEYS}
    return json.loads(json.dumps(config, default=str, sort_keys=True))


def versions() -> dict:
    import onnx

    import imagpose

    return {"imagpose": imagpose.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "export_format": EXPORT_FORMAT_VERSION}


def fingerprint(pipe, component: str) -> dict:
    """Hashes of the weights and the configs of the modules a component is made of."""
    module = ComponentModule(pipe, component)
    return {"configs": {name: _component_config(child) for name, child in module.named_children()},
            "weights": {name: weights_digest(child) for name, child in module.named_children()}}


def describe(pipe, component: str, options: ExportOptions) -> dict:
    """Everything the exported file depends on; its hash is the cache key."""
    prints = fingerprint(pipe, component)
    configs, weights = prints["configs"], prints["weights"]
    contract = CONTRACTS[component]
    options_dict = asdict(options)
    del options_dict["deepcache_branches"]  # which graphs to export, not how: the component names the branch
    if not uses_grid(component):  # only the UNet graphs bake the grid in
        options_dict["bucket"] = {**options_dict["bucket"], "rows": None, "cols": None}
    data = {"component": component, "versions": versions(), "options": options_dict, "configs": configs,
            "weights": weights, "inputs": contract.input_names, "outputs": contract.output_names,
            "dynamic_axes": contract.dynamic_axes() if options.dynamic else {},
            "grid": [options.bucket.rows, options.bucket.cols] if uses_grid(component) else None}
    data["cache_key"] = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return data


def _read_sidecar(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _cached(out_dir: Path, component: str, description: dict) -> ExportResult | None:
    """The export in ``out_dir`` if it was made from the same description and its files are unchanged."""
    meta = _read_sidecar(out_dir / f"{component}.json")
    if meta is None or meta.get("cache_key") != description["cache_key"]:
        return None
    problems = changed_files(out_dir, meta["files"])
    if problems:
        log.warning("%s: not reused, re-exporting: %s", component, "; ".join(problems))
        return None
    data = out_dir / meta["data_file"] if meta["data_file"] else None
    return ExportResult(component, out_dir / meta["file"], data, True, meta, meta["node_counts"])


def verify_export(out_dir: Path, component: str) -> dict:
    """The sidecar of an exported component, after checking that its files are the ones the export wrote."""
    sidecar = out_dir / f"{component}.json"
    meta = _read_sidecar(sidecar)
    if meta is None:
        raise ExportError(f"{sidecar} not found or unreadable: {out_dir} holds no usable export of {component}; "
                          f"export it with `imagpose export onnx --out {out_dir}`.")
    if meta.get("versions", {}).get("export_format") != EXPORT_FORMAT_VERSION:
        raise ExportError(f"{sidecar} was written by another version of the exporter; re-export {out_dir} with "
                          "`imagpose export onnx --force`.")
    problems = changed_files(out_dir, meta["files"])
    if problems:
        raise ExportError(f"{'; '.join(problems)}. Exported files are only used as written; re-export with "
                          f"`imagpose export onnx --out {out_dir} --force`.")
    return meta


# ----------------------------------------------------------------------------- export
def _torch_export(module: torch.nn.Module, sample: tuple, path: Path, component: str, options: ExportOptions):
    contract = CONTRACTS[component]
    kwargs = dict(input_names=contract.input_names, output_names=contract.output_names,
                  opset_version=options.opset)
    if options.exporter == "torchscript":
        kwargs.update(dynamo=False, do_constant_folding=True,
                      dynamic_axes=contract.dynamic_axes() if options.dynamic else None)
    else:
        kwargs.update(dynamo=True, external_data=True, verbose=False)
        if options.dynamic:
            from torch.export import Dim

            per_input = tuple({axis: Dim.AUTO for axis in contract.dynamic_axes().get(name, {})} or None
                              for name in contract.input_names)
            kwargs["dynamic_shapes"] = (per_input,)  # ComponentModule.forward(*inputs): one varargs entry
    import warnings

    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, sample, str(path), **kwargs)


def export_component(pipe, component: str, out_dir: str | Path, options: ExportOptions = ExportOptions(),
                     force: bool = False) -> ExportResult:
    """Export one component to ``out_dir/<component>.onnx`` (+ ``.onnx.data`` when over 2 GB)."""
    import onnx

    if component not in CONTRACTS:
        raise InvalidArgumentError(f"Unknown component {component!r}; choose from {', '.join(COMPONENTS)} or a "
                                   "DeepCache pair unet_deepcache_full_b<k>, unet_deepcache_shallow_b<k>.")
    if (deepcache := deepcache_form(component)) is not None:
        DeepCacheConfig(1, deepcache[1]).check(pipe.unet)  # a branch this UNet has
    pipe.check_tile_size((options.bucket.tile_height, options.bucket.tile_width), (options.bucket.rows,
                                                                                    options.bucket.cols))
    out_dir = make_output_folder(out_dir)
    description = describe(pipe, component, options)
    if not force and (cached := _cached(out_dir, component, description)) is not None:
        log.info("%s: cache hit (%s), not re-exported", component, cached.path.name)
        return cached

    start = time.perf_counter()
    dtype = DTYPES[options.dtype]
    module = ComponentModule(pipe, component, (options.bucket.rows, options.bucket.cols))
    if dtype != torch.float32:
        module = copy.deepcopy(module).to(dtype)
    module.eval()
    bucket = options.bucket if uses_grid(component) else replace(options.bucket, cfg=False)
    sample = CONTRACTS[component].sample_inputs(axis_values(bucket, model_config(pipe)), dtype, device=pipe.device)

    with staged_export(out_dir, component) as staged:
        raw = staged.path(f"raw/{component}.onnx")
        _torch_export(module, sample, raw, component, options)
        # graphs over 2 GB: run the passes on the structure and load the weights once, to save as one file
        large = sum(f.stat().st_size for f in raw.parent.iterdir()) > EXTERNAL_DATA_THRESHOLD
        model = onnx.load(str(raw), load_external_data=not large)
        if options.dynamic:
            model = name_dynamic_axes(model, CONTRACTS[component].dynamic_axes())
        model, counts = run_passes(model, list(options.passes), weights_loaded=not large)
        if large:
            onnx.external_data_helper.load_external_data_for_model(model, str(raw.parent))
        shutil.rmtree(raw.parent)
        meta = {key: description[key] for key in ("component", "cache_key", "versions", "options", "grid",
                                                  "inputs", "outputs", "dynamic_axes")}
        for key, value in meta.items():
            model.metadata_props.add(key=f"imagpose.{key}", value=json.dumps(value, default=str))
        model.metadata_props.add(key="imagpose.configs", value=json.dumps(description["configs"]))
        external = initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD
        path = staged.path(f"{component}.onnx")
        data = save_model(model, path, external)
        del model
        infer_and_check(path)
        final_data = out_dir / data.name if data else None
        files = {p.name: file_record(p) for p in (path, data) if p is not None}  # digests of what was written
        staged.sidecar = {**description, "file": path.name, "data_file": data.name if data else None,
                          "files": files, "node_counts": counts, "seconds": round(time.perf_counter() - start, 2)}
    log.info("%s: exported in %.1f s", component, time.perf_counter() - start)
    return ExportResult(component, out_dir / path.name, final_data, False, staged.sidecar, counts,
                        time.perf_counter() - start)


def export_pipeline(pipe, out_dir: str | Path, options: ExportOptions = ExportOptions(),
                    components: tuple[str, ...] = COMPONENTS, force: bool = False) -> list[ExportResult]:
    """Export several components (and the DeepCache pairs of ``options.deepcache_branches``) and write
    ``out_dir/manifest.json`` listing them."""
    for branch in options.deepcache_branches:  # every branch checked before the first component is exported
        DeepCacheConfig(1, branch).check(pipe.unet)
    extra = [c for c in deepcache_components(options.deepcache_branches) if c not in components]
    results = [export_component(pipe, c, out_dir, options, force) for c in (*components, *extra)]
    manifest = {"components": {r.component: {"file": r.path.name, "sidecar": f"{r.component}.json"}
                               for r in results},
                "options": asdict(options), "model_config": model_config(pipe),
                "grid": [options.bucket.rows, options.bucket.cols]}
    write_json(Path(out_dir) / "manifest.json", manifest)
    return results
