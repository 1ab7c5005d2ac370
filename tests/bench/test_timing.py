"""imagpose.timing, the one stopwatch the benchmark (and every other timer) uses: it measures the block, skips
warm-up runs and keeps the median."""

import time

import pytest

from imagpose.errors import InvalidArgumentError
from imagpose.timing import RunTimes, Stopwatch, time_runs


def test_stopwatch_measures_the_block():
    with Stopwatch("cpu") as watch:
        time.sleep(0.05)
    assert 0.05 <= watch.seconds < 1.0


def test_time_runs_skips_warmup_and_keeps_every_run():
    delays = iter([0.2, 0.01, 0.03, 0.02])  # the first call is the warm-up (slow: lazy initialisation)
    calls = []

    def work():
        calls.append(1)
        time.sleep(next(delays))

    runs = time_runs(work, warmup=1, runs=3)
    print(runs.seconds)
    assert len(calls) == 4 and len(runs.seconds) == 3
    assert max(runs.seconds) < 0.2  # the warm-up is not among them
    assert runs.seconds[0] >= 0.01 and runs.seconds[1] >= 0.03 and runs.median >= 0.02
    assert RunTimes([3.0, 1.0, 2.0]).median == 2.0


def test_time_runs_refuses_no_runs():
    with pytest.raises(InvalidArgumentError, match="runs >= 1"):
        time_runs(lambda: None, runs=0)
