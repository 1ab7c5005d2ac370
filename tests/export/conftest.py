import pytest

from imagpose.export import ExportOptions, ShapeBucket, export_pipeline
from imagpose.export.runtime import runtime_folders

BUCKET = ShapeBucket(1, 64, 64, 2, 2)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_pipe):
    """Every component of the tiny pipeline exported once (fp32, opset 17, dynamic axes), where
    ``prepare_runtime(name, tiny_pipe, work_dir, BUCKET)`` keeps them: ``work_dir = onnx_dir.parent.parent``."""
    onnx_dir, _ = runtime_folders(tmp_path_factory.mktemp("runtime_tiny"), "fp32")
    results = export_pipeline(tiny_pipe, onnx_dir, ExportOptions(bucket=BUCKET))
    return onnx_dir, results
