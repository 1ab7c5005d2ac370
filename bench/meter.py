"""Stage meters for the benchmark harness: wall time (device-synchronised) or exact FLOPs, per stage.

A pipeline under test wraps each piece of work in ``with meter.stage(name, repeat=...)``: ``repeat`` is how
many times the released pipeline runs that piece per generation (e.g. the number of denoising steps). A
quick run may execute a loop stage fewer times than ``repeat`` (``meter.loop_limit``); the meter then
extrapolates from the executed iterations and says so. FLOPs come from ``torch.utils.flop_counter`` and
must be counted on the meta device (on CPU, FlopCounterMode counts 0 for scaled_dot_product_attention).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass
class StageRecord:
    name: str
    repeat: int  # times per generation in the released pipeline
    executed: int = 0  # times actually run in this measurement
    total: float = 0.0  # seconds or FLOPs over the executed runs
    samples: list = field(default_factory=list)

    @property
    def per_run(self) -> float:
        return self.total / self.executed if self.executed else 0.0

    @property
    def per_generation(self) -> float:
        """Extrapolated to ``repeat`` runs (exact when executed == repeat)."""
        return self.per_run * self.repeat

    @property
    def extrapolated(self) -> bool:
        return self.executed != self.repeat


class Meter:
    """Base: records per-stage totals. ``loop_limit`` caps how many times a repeated stage really runs."""

    unit = ""

    def __init__(self, loop_limit: int | None = None):
        self.loop_limit = loop_limit
        self.stages: dict[str, StageRecord] = {}

    def runs(self, repeat: int) -> int:
        """How many iterations of a loop of ``repeat`` to execute."""
        return repeat if self.loop_limit is None else max(1, min(repeat, self.loop_limit))

    def _record(self, name: str, repeat: int, amount: float) -> None:
        record = self.stages.setdefault(name, StageRecord(name, repeat))
        record.repeat = repeat
        record.executed += 1
        record.total += amount
        record.samples.append(amount)

    @contextmanager
    def stage(self, name: str, repeat: int = 1):
        yield

    def total(self) -> float:
        return sum(r.per_generation for r in self.stages.values())


class NullMeter(Meter):
    @contextmanager
    def stage(self, name: str, repeat: int = 1):
        yield


class TimeMeter(Meter):
    unit = "s"

    def __init__(self, device: torch.device | str = "cpu", loop_limit: int | None = None):
        super().__init__(loop_limit)
        self.device = torch.device(device)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def stage(self, name: str, repeat: int = 1):
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self._record(name, repeat, time.perf_counter() - start)


class FlopMeter(Meter):
    """Exact FLOPs per stage (1 multiply-add = 2 FLOPs), via one FlopCounterMode around the whole run."""

    unit = "FLOP"

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
    def stage(self, name: str, repeat: int = 1):
        before = self.counter.get_total_flops()
        yield
        self._record(name, repeat, float(self.counter.get_total_flops() - before))


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs of one call (run it on meta tensors for attention to be counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args, **kwargs)
    return counter.get_total_flops()
