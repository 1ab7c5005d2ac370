"""imagpose.export: ONNX export, TensorRT checks and engine builds, runtime backends, parity.

Import-light: ONNX, ONNX Runtime and TensorRT are imported by the functions that need them.
"""

from .components import COMPONENTS, CONTRACTS, ExportContract, ShapeBucket, TensorSpec, axis_values, model_config
from .onnx_export import ExportError, ExportOptions, ExportResult, export_component, export_pipeline

__all__ = ["COMPONENTS", "CONTRACTS", "ExportContract", "ExportError", "ExportOptions", "ExportResult",
           "ShapeBucket", "TensorSpec", "axis_values", "export_component", "export_pipeline", "model_config"]
