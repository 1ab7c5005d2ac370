"""Batched serving: a thread-safe generator with dynamic batching over any runtime backend.

    with IMAGPoseGenerator(pipe, max_batch=4, max_wait=0.02) as gen:
        future = gen.submit(request)              # from any thread; returns a concurrent.futures.Future
        result = future.result()                  # a GenerationResult
        results = gen.generate([r1, r2, r3])      # blocking; runs in this thread (see below)

One worker thread drains a bounded queue: it takes the oldest request, waits up to ``max_wait`` seconds for
more, and runs the batch through :func:`imagpose.batch_runner.run_isolated`, the batching core the servers share:
it builds the canvas of each request on its own (image loading and pose parsing, where bad files show up: a bad
request fails alone, with its own error) and runs up to ``max_batch`` good requests of one canvas geometry in one
pipeline call (they share every UNet call). Should a batched call fail anyway, its requests are run again one by
one, so only the culprit fails. Every request carries its own seed (drawn at submit time
when it has none), so its result does not depend on what it was batched with. ``submit`` applies back-pressure:
it blocks while the queue is full, or raises :class:`QueueFullError` (``block=False`` or after ``timeout``).
``close()`` finishes every queued request (or, with ``cancel_pending=True``, fails them with
:class:`GeneratorClosedError`); no request is ever lost. Leaving a ``with`` block on an exception (Ctrl-C in
the caller) fails the queued requests and stops the running call after its current denoising step; the worker
is a daemon thread, so it never keeps the process alive.

``generate(requests)`` runs its requests in the calling thread instead (batched the same way, by canvas geometry,
one call at a time with the worker's): the caller waits anyway, and this keeps PyTorch's CPU work on the OpenMP
thread pool the caller already has. Each thread that runs PyTorch CPU ops gets an OpenMP pool of its own, and once
a process has more pool threads than cores, libgomp stops spin-waiting between parallel regions in every pool (it
sleeps on a futex and is woken for each region instead), which can cost more than batching gains on small models.
Requests submitted from other threads run on the worker; for them, keep PyTorch on that one thread: give the
generator a function that loads the pipeline (``IMAGPoseGenerator(lambda: load_pipeline(...))``, loaded on the
worker), and run any other PyTorch work (a warm-up) with ``run_on_worker``. Measurements: docs/export.md ("Serving").

:func:`compare_throughput` times the same requests run one by one and through the SDK.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from .batch_runner import run_isolated
from .canvas import PoseRequest, validate_request
from .deepcache import check_deepcache_runtime
from .errors import IMAGPoseError, InvalidArgumentError
from .pipeline import OUTPUT_TYPES, GenerationResult, IMAGPosePipeline
from .sampling_config import SamplingConfig
from .timing import Stopwatch


class QueueFullError(IMAGPoseError, RuntimeError):
    """The request queue is full; retry later, raise ``max_queue``, or submit with ``block=True``."""


class GeneratorClosedError(IMAGPoseError, RuntimeError):
    """The generator was closed before the request ran."""


@dataclass
class _Job:
    request: PoseRequest | None  # None: a call (``run_on_worker``)
    future: Future
    enqueued: float = field(default_factory=time.perf_counter)
    call: Callable[[], object] | None = None


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
        pipe: an :class:`~imagpose.pipeline.IMAGPosePipeline`, or a function without arguments that returns one:
            the worker thread then loads it (``IMAGPoseGenerator(lambda: load_pipeline("tiny-people"))``), so a
            process whose other threads never run PyTorch keeps one OpenMP pool (see the module docstring).
        runtime: the :class:`~imagpose.runtime.Runtime` of every call (None: ``pipe``'s, see
            ``IMAGPosePipeline.set_runtime``, else PyTorch).
        max_batch: most requests per pipeline call.
        max_wait: seconds the worker waits for more requests once it has one.
        max_queue: most queued (not yet running) requests; ``submit`` blocks or raises beyond it.
        output_type: the pipeline's ``output_type`` for every request.
        sampling: the :class:`~imagpose.sampling_config.SamplingConfig` of every request (default: the pipeline's,
            see ``IMAGPosePipeline.sampling_config``).
        **sampling_arguments: the pipeline's sampling keyword arguments (``num_inference_steps=``, ``sampler=``,
            ``deepcache_interval=``, ...), replacing fields of ``sampling`` as in ``IMAGPosePipeline.__call__``.
    The sampling is checked here (:class:`~imagpose.errors.InvalidArgumentError`), not per request.
    """

    def __init__(self, pipe, runtime=None, max_batch: int = 4, max_wait: float = 0.01, max_queue: int = 64,
                 output_type: str = "pil", sampling: SamplingConfig | None = None, **sampling_arguments):
        for name, value, least in (("max_batch", max_batch, 1), ("max_queue", max_queue, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InvalidArgumentError(f"{name} must be an integer >= {least}, got {value!r}.")
        if not isinstance(max_wait, (int, float)) or not 0 <= max_wait < float("inf"):
            raise InvalidArgumentError(f"max_wait must be a finite number of seconds >= 0, got {max_wait!r}.")
        if output_type not in OUTPUT_TYPES:
            raise InvalidArgumentError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        self.runtime, self.output_type = runtime, output_type
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self.stats = GeneratorStats()
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._aborted = False  # set on an exception in the caller: the running call stops after its current step
        self._running = threading.Lock()  # one pipeline call at a time, the worker's or a generate() caller's
        loaded: Future = Future()
        self._worker = threading.Thread(target=self._run, args=(pipe, loaded), name="imagpose-generator",
                                        daemon=True)
        self._worker.start()
        try:
            pipe = loaded.result()  # the worker loads a pipeline given as a function
            if not isinstance(pipe, IMAGPosePipeline):
                raise InvalidArgumentError(f"IMAGPoseGenerator takes an IMAGPosePipeline or a function that returns "
                                           f"one, got {type(pipe).__name__}.")
            self.pipe = pipe
            self.sampling = pipe.sampling_config(sampling, **sampling_arguments)
            if self.sampling.deepcache is not None:
                check_deepcache_runtime(pipe.resolve_runtime(runtime), self.sampling.deepcache.branch)
        except BaseException:
            self.close(cancel_pending=True)
            raise

    # ------------------------------------------------------------------ client side
    def submit(self, request: PoseRequest, block: bool = True, timeout: float | None = None) -> Future:
        """Queue one request; the future resolves to its :class:`~imagpose.pipeline.GenerationResult`."""
        job = self._job(request)
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

    def generate(self, requests: list[PoseRequest]) -> list[GenerationResult]:
        """Run the requests in this thread, ``max_batch`` at a time and grouped by canvas geometry, and return their
        results in order (the first failure is raised). Calls alternate with the worker's (see the module docstring).
        """
        if isinstance(requests, PoseRequest):
            requests = [requests]
        if not isinstance(requests, (list, tuple)) or not requests:
            raise InvalidArgumentError("generate takes a non-empty list of PoseRequests (see imagpose.scenarios), got "
                                       f"{type(requests).__name__}.")
        jobs = [self._job(request) for request in requests]
        with self._cond:
            if self._closed:
                raise GeneratorClosedError("The generator is closed; create a new one.")
            self.stats.submitted += len(jobs)
        for job in jobs:
            job.future.set_running_or_notify_cancel()
        self._run_batch(jobs)
        return [job.future.result() for job in jobs]

    def run_on_worker(self, function: Callable, *args, **kwargs) -> Future:
        """Run ``function(*args, **kwargs)`` on the worker thread, in queue order between batches (a warm-up, a
        baseline, any PyTorch work that should share the worker's OpenMP pool); the future resolves to its
        return value or exception."""
        job = _Job(None, Future(), call=functools.partial(function, *args, **kwargs))
        with self._cond:
            if self._closed:
                raise GeneratorClosedError("The generator is closed; create a new one.")
            self._queue.append(job)
            self._cond.notify_all()
        return job.future

    @staticmethod
    def _job(request: PoseRequest) -> _Job:
        """Cheap structural checks, in the caller's thread, and a seed for a request that has none."""
        if not isinstance(request, PoseRequest):
            raise InvalidArgumentError(f"The SDK takes PoseRequest objects (see imagpose.scenarios), got "
                                       f"{type(request).__name__}.")
        validate_request(request)
        if request.seed is None:
            request = dataclasses.replace(request, seed=random.SystemRandom().randrange(2**63))
        return _Job(request, Future())

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self, cancel_pending: bool = False, timeout: float | None = None) -> None:
        """Stop accepting requests; finish the queued ones (or fail them), then stop the worker."""
        with self._cond:
            self._closed = True
            if cancel_pending:
                while self._queue:
                    self._fail(self._queue.popleft(), GeneratorClosedError(
                        "The generator was closed before this request ran."))
            self._cond.notify_all()
        self._worker.join(timeout)

    def __enter__(self) -> IMAGPoseGenerator:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
            return
        # An exception (Ctrl-C included) leaves the block: fail what is queued, stop the running call after its
        # current step, and return at once instead of finishing minutes of queued work.
        self._aborted = True
        self.close(cancel_pending=True, timeout=0)

    # ------------------------------------------------------------------ worker side
    def _next_batch(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            batch = [self._queue.popleft()]
            deadline = time.monotonic() + self.max_wait
            while batch[0].call is None and len(batch) < self.max_batch:
                if self._queue:
                    if self._queue[0].call is not None:  # a call runs on its own, after this batch
                        break
                    batch.append(self._queue.popleft())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            self._cond.notify_all()  # room in the queue for blocked submitters
        return batch

    def _run(self, pipe, loaded: Future) -> None:
        try:
            loaded.set_result(pipe if isinstance(pipe, IMAGPosePipeline) or not callable(pipe) else pipe())
        except BaseException as exc:  # noqa: BLE001 - raised by the constructor, in the caller's thread
            loaded.set_exception(exc)
            return
        while (batch := self._next_batch()) is not None:
            if batch[0].call is not None:
                self._run_call(batch[0])
                continue
            self._run_batch([job for job in batch if job.future.set_running_or_notify_cancel()])

    @staticmethod
    def _run_call(job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.call())
        except BaseException as exc:  # noqa: BLE001 - handed to the future
            job.future.set_exception(exc)

    def _run_batch(self, jobs: list[_Job]) -> None:
        """One batch through the shared batching core: each request's result or error goes to its own future."""
        call_sizes: list[int] = []
        outcomes = run_isolated(self.pipe, [job.request for job in jobs], self.sampling, max_batch=self.max_batch,
                                runtime=self.runtime, output_type=self.output_type,
                                callback_on_step_end=self._stop_if_aborted, retry=lambda exc: not self._aborted,
                                call_sizes=call_sizes, call_lock=self._running)
        with self._cond:
            for job, outcome in zip(jobs, outcomes):
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                    self.stats.failed += 1
                else:
                    job.future.set_result(outcome)
                    self.stats.completed += 1
            self.stats.batches += call_sizes

    def _stop_if_aborted(self, pipe, step, timestep, tensors) -> None:
        """Step callback: end the running call between two denoising steps once the caller has left on an error."""
        if self._aborted:
            raise GeneratorClosedError("The generator was closed (the caller stopped) while this request ran.")

    def _fail(self, job: _Job, exc: BaseException) -> None:
        with self._cond:
            job.future.set_exception(exc)
            self.stats.failed += 1


# ---------------------------------------------------------------------- throughput
@dataclass
class ThroughputComparison:
    """Wall-clock seconds for the same requests, run one by one (``pipe(request)``) and through the SDK."""

    requests: int
    sequential_runs: list[float]
    sdk_runs: list[float]
    sdk_batches: list[int]  # batch sizes of the last SDK run

    @property
    def sequential_seconds(self) -> float:
        return statistics.median(self.sequential_runs)

    @property
    def sdk_seconds(self) -> float:
        return statistics.median(self.sdk_runs)

    @property
    def sequential_requests_per_s(self) -> float:
        return self.requests / self.sequential_seconds

    @property
    def sdk_requests_per_s(self) -> float:
        return self.requests / self.sdk_seconds

    @property
    def speedup(self) -> float:
        """SDK requests/s over sequential requests/s (> 1: batching helps)."""
        return self.sequential_seconds / self.sdk_seconds

    def as_dict(self) -> dict:
        return {"requests": self.requests, "repeats": len(self.sdk_runs),
                "sequential_seconds": self.sequential_seconds, "sdk_seconds": self.sdk_seconds,
                "sequential_requests_per_s": self.sequential_requests_per_s,
                "sdk_requests_per_s": self.sdk_requests_per_s, "speedup": self.speedup,
                "sequential_runs": self.sequential_runs, "sdk_runs": self.sdk_runs,
                "sdk_mean_batch": sum(self.sdk_batches) / max(len(self.sdk_batches), 1)}


def compare_throughput(pipe, requests: list[PoseRequest], repeats: int = 3, max_batch: int = 4,
                       max_wait: float = 0.01, runtime=None, output_type: str = "pil",
                       through_worker: bool = False, sampling: SamplingConfig | None = None,
                       **sampling_arguments) -> ThroughputComparison:
    """Time the same requests one by one through ``pipe`` and all at once through an :class:`IMAGPoseGenerator`,
    on the same thread, so that only the batching differs.

    The SDK runs them with ``generate`` in this thread, where the one-by-one runs run too; or, with
    ``through_worker``, by ``submit`` from this thread and waiting (as requests from a server's threads run), the
    one-by-one runs then running on the generator's worker thread (``run_on_worker``). Both alternate (one by one,
    SDK, one by one, ...) after one untimed warm-up of each, ``repeats`` times; the medians are reported. On CUDA
    the clock is read after the device has finished. ``sampling`` and ``sampling_arguments``: as for
    :class:`IMAGPoseGenerator`.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InvalidArgumentError(f"repeats must be an integer >= 1, got {repeats!r}.")
    if not requests:
        raise InvalidArgumentError("compare_throughput needs at least one request.")
    settings = dict(sampling=pipe.sampling_config(sampling, **sampling_arguments), output_type=output_type)
    device = pipe._execution_device
    batches: list[int] = []

    def one_by_one() -> None:
        for request in requests:
            pipe(request, runtime=runtime, progress=False, **settings)

    def seconds(run) -> float:
        with Stopwatch(device) as watch:
            run()
        return watch.seconds

    with IMAGPoseGenerator(pipe, runtime=runtime, max_batch=max_batch, max_wait=max_wait,
                           max_queue=max(len(requests), 1), **settings) as gen:
        def sequential() -> None:
            if through_worker:
                gen.run_on_worker(one_by_one).result()
            else:
                one_by_one()

        def through_sdk() -> None:
            start = len(gen.stats.batches)
            if through_worker:
                for future in [gen.submit(request) for request in requests]:
                    future.result()
            else:
                gen.generate(requests)
            batches[:] = gen.stats.batches[start:]

        sequential(), through_sdk()  # warm-up: lazy initialisation, allocator and kernel caches
        runs = [(seconds(sequential), seconds(through_sdk)) for _ in range(repeats)]
    return ThroughputComparison(len(requests), [s for s, _ in runs], [b for _, b in runs], list(batches))
