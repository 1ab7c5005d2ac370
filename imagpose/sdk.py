"""Batched serving: a thread-safe generator with dynamic batching over any runtime backend.

    with IMAGPoseGenerator(pipe, max_batch=4, max_wait=0.02) as gen:
        future = gen.submit(request)              # from any thread; returns a concurrent.futures.Future
        result = future.result()                  # a GenerationResult
        results = gen.generate([r1, r2, r3])      # blocking helper

One worker thread drains a bounded queue: it takes the oldest request, waits up to ``max_wait`` seconds for
more, and runs up to ``max_batch`` requests in one pipeline call (requests with the same canvas geometry
share every UNet call). Every request carries its own seed (drawn at submit time when it has none), so its
result does not depend on what it was batched with. ``submit`` applies back-pressure: it blocks while the
queue is full, or raises :class:`QueueFullError` (``block=False`` or after ``timeout``). ``close()`` finishes
every queued request (or, with ``cancel_pending=True``, fails them with :class:`GeneratorClosedError`);
no request is ever lost.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from .canvas import PoseRequest, validate_request
from .errors import IMAGPoseError
from .pipeline import GenerationResult


class QueueFullError(IMAGPoseError, RuntimeError):
    """The request queue is full; retry later, raise ``max_queue``, or submit with ``block=True``."""


class GeneratorClosedError(IMAGPoseError, RuntimeError):
    """The generator was closed before the request ran."""


@dataclass
class _Job:
    request: PoseRequest
    future: Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class GeneratorStats:
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    batches: list[int] = field(default_factory=list)  # size of every pipeline call

    @property
    def mean_batch(self) -> float:
        return sum(self.batches) / len(self.batches) if self.batches else 0.0


class IMAGPoseGenerator:
    """Serve :class:`~imagpose.canvas.PoseRequest` objects from many threads with dynamic batching.

    Args:
        pipe: an :class:`~imagpose.pipeline.IMAGPosePipeline`.
        backend: runtime for every call (None: ``pipe.backend`` or PyTorch).
        max_batch: most requests per pipeline call.
        max_wait: seconds the worker waits for more requests once it has one.
        max_queue: most queued (not yet running) requests; ``submit`` blocks or raises beyond it.
        num_inference_steps, guidance_scale, eta, output_type: pipeline arguments shared by every request.
    """

    def __init__(self, pipe, backend=None, max_batch: int = 4, max_wait: float = 0.01, max_queue: int = 64,
                 num_inference_steps: int = 20, guidance_scale: float = 2.0, eta: float = 0.0,
                 output_type: str = "pil"):
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait >= 0.")
        self.pipe, self.backend = pipe, backend
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self.call_kwargs = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, eta=eta,
                                output_type=output_type, progress=False)
        self.stats = GeneratorStats()
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="imagpose-generator", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ client side
    def submit(self, request: PoseRequest, block: bool = True, timeout: float | None = None) -> Future:
        """Queue one request; the future resolves to its :class:`~imagpose.pipeline.GenerationResult`."""
        if not isinstance(request, PoseRequest):
            raise TypeError(f"submit() takes a PoseRequest, got {type(request).__name__}.")
        validate_request(request)  # cheap structural checks fail in the caller's thread
        if request.seed is None:
            request = dataclasses.replace(request, seed=random.SystemRandom().randrange(2**63))
        job = _Job(request, Future())
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed:
                    raise GeneratorClosedError("The generator is closed; create a new one.")
                if len(self._queue) < self.max_queue:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if not block or (remaining is not None and remaining <= 0):
                    raise QueueFullError(
                        f"The request queue is full ({self.max_queue} waiting); retry later, raise max_queue, or "
                        "submit with block=True to wait for room.")
                self._cond.wait(remaining)
            self._queue.append(job)
            self.stats.submitted += 1
            self._cond.notify_all()
        return job.future

    def generate(self, requests: list[PoseRequest], timeout: float | None = None) -> list[GenerationResult]:
        """Submit every request (blocking while the queue is full) and wait for all results, in order."""
        futures = [self.submit(r) for r in requests]
        return [f.result(timeout) for f in futures]

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self, cancel_pending: bool = False, timeout: float | None = None) -> None:
        """Stop accepting requests; finish the queued ones (or fail them), then stop the worker."""
        with self._cond:
            self._closed = True
            if cancel_pending:
                while self._queue:
                    job = self._queue.popleft()
                    if job.future.set_running_or_notify_cancel():
                        job.future.set_exception(GeneratorClosedError("The generator was closed before this "
                                                                      "request ran."))
                    self.stats.failed += 1
            self._cond.notify_all()
        self._worker.join(timeout)

    def __enter__(self) -> IMAGPoseGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ worker side
    def _next_batch(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            batch = [self._queue.popleft()]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                if self._queue:
                    batch.append(self._queue.popleft())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            self._cond.notify_all()  # room in the queue for blocked submitters
        return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            jobs = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if not jobs:
                continue
            try:
                results = self.pipe([job.request for job in jobs], backend=self.backend, **self.call_kwargs).results
            except BaseException as exc:  # every request of a failed call fails; the worker keeps serving
                for job in jobs:
                    job.future.set_exception(exc)
                self.stats.failed += len(jobs)
            else:
                for job, result in zip(jobs, results):
                    job.future.set_result(result)
                self.stats.completed += len(jobs)
            self.stats.batches.append(len(jobs))
