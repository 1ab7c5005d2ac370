"""Stage meters for the benchmark harness: wall time (device-synchronised) or exact FLOPs, per stage.

A pipeline under test wraps each piece of work in ``with meter.stage(name)``. Work inside a loop says how
long the released loop is: ``meter.stage("denoiser", repeat=steps)`` is one of ``steps`` iterations. A quick
run may execute fewer iterations than ``repeat`` (``meter.runs(repeat)``, capped by ``loop_limit``); the meter
then extrapolates from the executed ones and says so. Work outside loops is summed over every time it runs.
FLOPs come from ``torch.utils.flop_counter`` and must be counted on the meta device (on CPU, FlopCounterMode
counts 0 for scaled_dot_product_attention).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from imagpose.timing import Stopwatch


@dataclass
class StageRecord:
    name: str
    repeat: int | None = None  # loop stages: iterations per generation in the released pipeline
    executed: int = 0  # times actually run in this measurement
    total: float = 0.0  # seconds or FLOPs over the executed runs

    @property
    def per_run(self) -> float:
        return self.total / self.executed if self.executed else 0.0

    @property
    def per_generation(self) -> float:
        """The sum over one generation: loop stages extrapolated to ``repeat`` iterations (exact when all ran)."""
        return self.total if self.repeat is None else self.per_run * self.repeat

    @property
    def extrapolated(self) -> bool:
        return self.repeat is not None and self.executed != self.repeat


class Meter:
    """Records per-stage totals (this base records nothing). ``loop_limit`` caps how many loop iterations run."""

    def __init__(self, loop_limit: int | None = None):
        self.loop_limit = loop_limit
        self.stages: dict[str, StageRecord] = {}

    def runs(self, repeat: int) -> int:
        """How many iterations of a loop of ``repeat`` to execute."""
        return repeat if self.loop_limit is None else max(1, min(repeat, self.loop_limit))

    def _record(self, name: str, repeat: int | None, amount: float) -> None:
        record = self.stages.setdefault(name, StageRecord(name, repeat))
        record.executed += 1
        record.total += amount

    @contextmanager
    def stage(self, name: str, repeat: int | None = None):
        yield

    def total(self) -> float:
        return sum(r.per_generation for r in self.stages.values())


class TimeMeter(Meter):
    """Seconds per stage, each stage timed by an :class:`imagpose.timing.Stopwatch` on ``device``."""

    def __init__(self, device: torch.device | str = "cpu", loop_limit: int | None = None):
        super().__init__(loop_limit)
        self.device = torch.device(device)

    @contextmanager
    def stage(self, name: str, repeat: int | None = None):
        with Stopwatch(self.device) as watch:
            yield
        self._record(name, repeat, watch.seconds)


class FlopMeter(Meter):
    """Exact FLOPs per stage (1 multiply-add = 2 FLOPs), via one FlopCounterMode around the whole run."""

    def __init__(self, loop_limit: int | None = 1):
        super().__init__(loop_limit)
        from torch.utils.flop_counter import FlopCounterMode

        self.counter = FlopCounterMode(display=False)

    def __enter__(self):
        self.counter.__enter__()
        return self

    def __exit__(self, *exc):
        self.counter.__exit__(*exc)

    @contextmanager
    def stage(self, name: str, repeat: int | None = None):
        before = self.counter.get_total_flops()
        yield
        self._record(name, repeat, float(self.counter.get_total_flops() - before))


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs of one call (run it on meta tensors for attention to be counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args, **kwargs)
    return counter.get_total_flops()
