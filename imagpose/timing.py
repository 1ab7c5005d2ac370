"""Timing: one device-synchronised stopwatch and the median of repeated runs.

    with Stopwatch("cuda") as watch:
        pipe(request)
    watch.seconds

    runs = time_runs(lambda: runtime.unet(*inputs, grid), device="cuda", warmup=2, runs=10)
    runs.median, runs.seconds

On a CUDA device the clock is read after ``torch.cuda.synchronize``, which waits for every stream of the device:
ONNX Runtime and TensorRT enqueue on streams of their own, which CUDA events recorded on PyTorch's current
stream would not cover, and host-side launch overhead (the bottleneck of small models) is part of what users
wait for. Elsewhere the work is synchronous and ``time.perf_counter`` is read directly.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .errors import InvalidArgumentError


def synchronize(device: torch.device | str) -> None:
    """Wait until all queued work on ``device`` has finished (a no-op off CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Wall time of a ``with`` block, synchronised with ``device`` on entry and exit; ``seconds`` after exit."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.seconds: float | None = None
        self._start = 0.0

    def __enter__(self) -> Stopwatch:
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._start


@dataclass
class RunTimes:
    """Seconds of each timed run (warm-up runs excluded)."""

    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def time_runs(fn: Callable[[], object], device: torch.device | str = "cpu", warmup: int = 1,
              runs: int = 5) -> RunTimes:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times under a :class:`Stopwatch` each."""
    if runs < 1 or warmup < 0:
        raise InvalidArgumentError(f"time_runs needs runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}.")
    for _ in range(warmup):
        fn()
    times = RunTimes()
    for _ in range(runs):
        with Stopwatch(device) as watch:
            fn()
        times.seconds.append(watch.seconds)
    return times
