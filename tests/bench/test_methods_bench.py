"""pytest-benchmark over every method: one pass at reduced size with one iteration per loop (encoders, one
denoising step of each diffusion stage, decoding). `make bench` / `pytest tests/bench -m bench
--benchmark-json=...`; the full report with extrapolated per-image times is `imagpose bench --quick`."""

import pytest
import torch

from imagpose.bench.meter import Meter
from imagpose.bench.scenarios import METHODS, build_method, resolve_setting

pytestmark = pytest.mark.bench


@pytest.mark.parametrize("name", METHODS)
def test_one_pass_one_step(benchmark, name):
    torch.manual_seed(0)
    method = build_method(name, "reduced").eval()
    setting = resolve_setting(method.info.released, "as_released", "reduced", "cpu")
    inputs = method.example_inputs(1, setting, "cpu", torch.float32, torch.Generator().manual_seed(0))
    benchmark.group = "methods-one-step"
    benchmark.extra_info.update(method=name, resolution=list(setting.resolution), device="cpu")

    def run():
        with torch.no_grad():
            return method.generate(inputs, setting, Meter(loop_limit=1))

    images = benchmark.pedantic(run, rounds=3, warmup_rounds=1, iterations=1)
    assert torch.isfinite(images).all()
