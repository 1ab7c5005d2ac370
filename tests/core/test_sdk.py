"""The batching SDK: load test from many threads, back-pressure, shutdown."""

import threading
import time

import numpy as np
import pytest

from imagpose import scenarios
from imagpose.canvas import CanvasError
from imagpose.sdk import GeneratorClosedError, IMAGPoseGenerator, QueueFullError

STEPS = 2


def _requests(samples, count):
    red = {n: samples(f"person_red_{n}") for n in ("front", "arms_up", "walking", "side")}
    blue = samples("person_blue_front")
    makers = [
        lambda s: scenarios.t1(*red["front"], red["walking"][1], tile_size=(64, 64), seed=s),
        lambda s: scenarios.t2(*blue, red["arms_up"][1], tile_size=(64, 64), seed=s),
        lambda s: scenarios.t3([red["front"], red["side"]], red["walking"][1], tile_size=(64, 64), seed=s),
        lambda s: scenarios.imagpose_star(*red["front"], [red["arms_up"][1], red["side"][1]], tile_size=(64, 64),
                                          seed=s),
        lambda s: scenarios.t2(*blue, red["side"][1], tile_size=(64, 96), seed=s),  # another canvas geometry
    ]
    return [makers[i % len(makers)](1000 + i) for i in range(count)]


def test_64_requests_from_8_threads_match_single_runs(tiny_pipe, samples):
    requests = _requests(samples, 64)
    results = [None] * len(requests)
    with IMAGPoseGenerator(tiny_pipe, max_batch=6, max_wait=0.02, max_queue=16, num_inference_steps=STEPS) as gen:
        def client(worker):
            futures = [(i, gen.submit(requests[i])) for i in range(worker, len(requests), 8)]
            for i, future in futures:
                results[i] = future.result(timeout=300)

        threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = gen.stats
    assert all(r is not None for r in results)  # zero lost
    assert stats.submitted == stats.completed == 64 and stats.failed == 0
    assert max(stats.batches) > 1, "the load test never batched"
    print(f"batches: {len(stats.batches)}, mean size {stats.mean_batch:.2f}, sizes {sorted(set(stats.batches))}")
    worst = 0
    for request, result in zip(requests, results):
        alone = tiny_pipe(request, num_inference_steps=STEPS, progress=False).results[0]
        assert result.seed == request.seed and result.target_indices == alone.target_indices
        for a, b in zip(result.targets, alone.targets):
            diff = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))
            worst = max(worst, int(diff.max()))
    print(f"largest pixel difference batched vs alone: {worst} levels")
    assert worst == 0  # identical images whatever the request was batched with


def test_queue_full_back_pressure_and_timeout(tiny_pipe, samples):
    (request,) = _requests(samples, 1)
    gen = IMAGPoseGenerator(tiny_pipe, max_batch=1, max_wait=0.0, max_queue=2, num_inference_steps=STEPS)
    gate = threading.Event()
    original = gen.pipe

    class SlowPipe:  # holds the worker inside its first call until the test opens the gate
        def __call__(self, *args, **kwargs):
            gate.wait(30)
            return original(*args, **kwargs)

    gen.pipe = SlowPipe()
    first = gen.submit(request)
    deadline = time.monotonic() + 10
    while gen.pending() and time.monotonic() < deadline:  # wait until the worker holds the first request
        time.sleep(0.01)
    queued = [gen.submit(request), gen.submit(request)]
    with pytest.raises(QueueFullError, match="queue is full"):
        gen.submit(request, block=False)
    with pytest.raises(QueueFullError):
        gen.submit(request, timeout=0.05)
    gate.set()
    late = gen.submit(request, timeout=30)  # blocks until there is room, then succeeds
    assert all(f.result(timeout=120) is not None for f in [first, *queued, late])
    gen.close()


def test_close_finishes_or_fails_every_pending_request(tiny_pipe, samples):
    requests = _requests(samples, 6)
    gen = IMAGPoseGenerator(tiny_pipe, max_batch=2, max_wait=0.0, num_inference_steps=STEPS)
    futures = [gen.submit(r) for r in requests]
    gen.close()  # default: finish everything queued
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(GeneratorClosedError):
        gen.submit(requests[0])

    gen = IMAGPoseGenerator(tiny_pipe, max_batch=1, max_wait=0.0, num_inference_steps=STEPS)
    futures = [gen.submit(r) for r in requests]
    gen.close(cancel_pending=True)
    outcomes = ["ok" if f.exception() is None else type(f.exception()).__name__ for f in futures]
    assert all(f.done() for f in futures)  # none lost: each finished or failed
    assert set(outcomes) <= {"ok", "GeneratorClosedError"} and "GeneratorClosedError" in outcomes


def test_bad_requests_fail_in_the_callers_thread_and_errors_reach_futures(tiny_pipe, samples, tmp_path):
    from imagpose.canvas import PoseRequest, View

    with IMAGPoseGenerator(tiny_pipe, num_inference_steps=STEPS) as gen:
        with pytest.raises(CanvasError, match="no target"):
            gen.submit(PoseRequest([View.source(*samples("person_red_front"))] * 4))
        with pytest.raises(TypeError):
            gen.submit("request")
        bad = tmp_path / "bad.png"
        bad.write_text("nope")
        future = gen.submit(scenarios.t2(*samples("person_red_front"), bad, tile_size=(64, 64)))
        with pytest.raises(ValueError, match="not a readable image"):
            future.result(timeout=60)
        ok = gen.submit(_requests(samples, 1)[0]).result(timeout=60)  # the worker survived
        assert ok.targets
