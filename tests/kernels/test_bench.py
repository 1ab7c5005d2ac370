"""The kernel benchmark: cases as data, byte counts, CPU rows (reference providers only), CLI and JSON."""

import json
import types

import torch

from imagpose.kernels import bench
from imagpose.kernels.bench import CPU_NOTE, RUNS, Case, input_copies, main, median_ms, run_kernel_benchmark


def test_case_sizes_follow_the_unet_levels():
    case = Case("attention", (1024, 1024), 0, torch.float16)
    assert (case.channels, case.latent, case.positions) == (320, (128, 128), 2 * 64 * 64)
    assert case.bytes_moved == 4 * 8192 * 4 * 320 * 2  # q, k, v read + out written, fp16
    deepest = Case("tokens_to_canvas", (512, 384), 3, torch.float32)
    assert (deepest.channels, deepest.latent, deepest.positions) == (1280, (8, 6), 2 * 4 * 3)
    assert deepest.bytes_moved == 3 * 2 * 1280 * 8 * 6 * 4  # tokens + residual read, canvas written


def test_cpu_run_times_the_reference_providers_only():
    rows = run_kernel_benchmark("cpu", kernels=("attention", "layer_norm_view_pe"), canvases=((256, 256),),
                                levels=(2, 3))
    assert {(r["kernel"], r["provider"]) for r in rows} == {
        ("attention", "eager"), ("attention", "sdpa"), ("layer_norm_view_pe", "eager")}
    for row in rows:
        assert row["median_ms"] > 0 and row["gbps"] > 0 and row["floor_ms"] > 0
        assert row["floor_ratio"] is None and row["note"] == CPU_NOTE


def test_cli_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--device", "cpu", "--canvas", "128x128", "--kernels", "tokens_to_canvas", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "tokens_to_canvas" in table and "interpreter" in table
    rows = json.loads(out.read_text())
    assert [r["level"] for r in rows] == [0, 1, 2, 3] and all(r["provider"] == "eager" for r in rows)


def test_median_ms_times_back_to_back_calls_with_the_project_timer(monkeypatch):
    """imagpose.timing.time_runs synchronises once per run; a run repeats a microsecond call many times."""
    from imagpose.timing import time_runs

    timed = []

    def recording_time_runs(fn, device, warmup, runs):
        timed.append((device, warmup, runs))
        return time_runs(fn, device, warmup=warmup, runs=runs)

    monkeypatch.setattr(bench, "time_runs", recording_time_runs)
    calls = []
    assert median_ms(lambda: calls.append(1), "cpu") > 0
    assert timed == [("cpu", 1, 1), ("cpu", 0, RUNS)]
    repeats = (len(calls) - 2) // RUNS  # two probe calls (warm-up and timed), then RUNS runs of `repeats` calls
    assert repeats > 10 and len(calls) == 2 + RUNS * repeats


def test_cuda_cases_cycle_through_inputs_that_overflow_the_l2_cache(monkeypatch):
    l2_bytes = 50 * 2**20
    properties = types.SimpleNamespace(L2_cache_size=l2_bytes)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: properties)
    for case in (Case("attention", (512, 384), 3, torch.float16),
                 Case("tokens_to_canvas", (512, 384), 0, torch.float16)):
        copies = input_copies(case, "cuda")
        assert copies * case.bytes_moved >= 2 * l2_bytes > (copies - 1) * case.bytes_moved
    assert input_copies(Case("attention", (1024, 1024), 0, torch.float16), "cpu") == 1
