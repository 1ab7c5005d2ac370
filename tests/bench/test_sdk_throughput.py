"""The benchmark's SDK throughput section (bench/sdk_throughput.py): the same requests sequentially and through
the SDK on the benchmark's IMAGPose model, reported with the device's name."""

import statistics

import pytest

from imagpose.bench.harness import cpu_name
from imagpose.bench.sdk_throughput import measure_sdk_throughput


def test_sdk_throughput_row(one_thread):
    """The row names the device and the run, its rates are the requests over the median of the timed runs,
    and the SDK ran the requests in batches of the size asked for (two requests, one batch of 2)."""
    row = measure_sdk_throughput("cpu", size="tiny", steps=1, requests=2, max_batch=2, repeats=2)
    print(row)
    assert row["device"] == cpu_name() and row["preset"] == "tiny" and row["tile"] == [256, 176]
    assert (row["requests"], row["steps"], row["max_batch"], row["repeats"]) == (2, 1, 2, 2)
    assert len(row["sequential_runs"]) == len(row["sdk_runs"]) == 2
    assert row["sequential_seconds"] == statistics.median(row["sequential_runs"])
    assert row["sdk_seconds"] == statistics.median(row["sdk_runs"])
    assert row["sequential_requests_per_s"] == pytest.approx(2 / row["sequential_seconds"])
    assert row["sdk_requests_per_s"] == pytest.approx(2 / row["sdk_seconds"])
    assert row["speedup"] == pytest.approx(row["sequential_seconds"] / row["sdk_seconds"])
    assert row["sdk_mean_batch"] == 2
