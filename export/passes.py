"""Named ONNX graph passes; each logs the node count it leaves (TensorRT demo ``Optimizer`` pattern).

Every pass takes and returns an ``onnx.ModelProto``. Passes that need the serialised model (shape inference,
checking) work through a file path, so graphs over the 2 GB protobuf limit are handled.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import onnx

log = logging.getLogger("imagpose.export")


def node_count(model: onnx.ModelProto) -> int:
    return len(model.graph.node)


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of initializer payload (in memory, whether or not it is stored externally later)."""
    total = 0
    for tensor in model.graph.initializer:
        if tensor.raw_data:
            total += len(tensor.raw_data)
        else:
            total += onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize * max(
                1, int(__import__("numpy").prod(tensor.dims)))
    return total


def cleanup_toposort(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx-graphsurgeon: remove dangling nodes/tensors, sort topologically."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    out.metadata_props.extend(model.metadata_props)
    return out


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """polygraphy constant folding (shape subgraphs, constant casts), then cleanup."""
    from polygraphy.backend.onnx import fold_constants as polygraphy_fold
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.WARNING  # our own log line reports the node count
    with contextlib.suppress(ImportError):
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)  # folding runs ORT sessions; their optimizer notes are noise

    out = polygraphy_fold(model, allow_onnxruntime_shape_inference=True)
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    return out


PASSES = {"cleanup_toposort": cleanup_toposort, "fold_constants": fold_constants}
NEEDS_VALUES = {"fold_constants"}


def run_passes(model: onnx.ModelProto, names: list[str], weights_loaded: bool = True
               ) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Run the named passes, logging node counts. Without loaded weights (graphs over 2 GB are processed as
    structure only, their weights left in the exporter's files), passes that need values are skipped."""
    counts = {"exported": node_count(model)}
    log.info("export: %d nodes after torch.onnx.export", counts["exported"])
    for name in names:
        if name in NEEDS_VALUES and not weights_loaded:
            log.info("pass %-17s skipped: graph over 2 GB is processed without its weights (the exporter "
                     "already folded constants)", name)
            continue
        model = PASSES[name](model)
        counts[name] = node_count(model)
        log.info("pass %-17s -> %d nodes", name, counts[name])
    return model, counts


def name_dynamic_axes(model: onnx.ModelProto, axes: dict[str, dict[int, str]]) -> onnx.ModelProto:
    """Give graph inputs/outputs our axis names (the dynamo exporter writes s0, s1, ...)."""
    for value in list(model.graph.input) + list(model.graph.output):
        for index, symbol in axes.get(value.name, {}).items():
            dim = value.type.tensor_type.shape.dim[index]
            dim.dim_param = symbol
    return model


def save_model(model: onnx.ModelProto, path: Path, external: bool) -> Path | None:
    """Save ``model`` at ``path``; with ``external``, all weights go to one ``<name>.data`` file beside it."""
    if external:
        data_name = path.name + ".data"
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024, convert_attribute=False)
        return path.with_name(data_name)
    onnx.save_model(model, str(path))
    return None


def infer_and_check(path: Path) -> None:
    """Shape inference and the ONNX checker through the file path (works for > 2 GB graphs)."""
    onnx.shape_inference.infer_shapes_path(str(path), str(path))
    onnx.checker.check_model(str(path))
