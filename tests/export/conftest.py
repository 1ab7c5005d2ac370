import pytest

from imagpose.export import ExportOptions, ShapeBucket, export_pipeline

BUCKET = ShapeBucket(1, 64, 64, 2, 2)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_pipe):
    """Every component of the tiny pipeline exported once (fp32, opset 17, dynamic axes)."""
    out = tmp_path_factory.mktemp("onnx_tiny")
    results = export_pipeline(tiny_pipe, out, ExportOptions(bucket=BUCKET))
    return out, results
