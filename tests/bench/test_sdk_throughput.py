"""The benchmark's SDK throughput section (bench/sdk_throughput.py): the same requests sequentially and through
the SDK on the benchmark's IMAGPose model, reported with the device's name."""

import pytest

from imagpose.bench.harness import cpu_name
from imagpose.bench.sdk_throughput import measure_sdk_throughput


def test_sdk_throughput_row(one_thread):
    row = measure_sdk_throughput("cpu", size="tiny", steps=1, requests=2, max_batch=2, repeats=1)
    print(row)
    assert row["device"] == cpu_name() and row["preset"] == "tiny" and row["tile"] == [256, 176]
    assert (row["requests"], row["steps"], row["max_batch"], row["repeats"]) == (2, 1, 2, 1)
    assert row["sequential_requests_per_s"] > 0 and row["sdk_requests_per_s"] > 0
    assert row["speedup"] == pytest.approx(row["sdk_requests_per_s"] / row["sequential_requests_per_s"])
    assert row["sdk_mean_batch"] >= 1
