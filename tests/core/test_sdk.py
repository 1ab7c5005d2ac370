"""The batching SDK: load test from many threads, back-pressure, shutdown."""

import math
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from imagpose import scenarios
from imagpose.canvas import CanvasError
from imagpose.errors import IMAGPoseError, InvalidArgumentError, MemoryLimitError
from imagpose.images import ImageInputError
from imagpose.sdk import GeneratorClosedError, IMAGPoseGenerator, QueueFullError, compare_throughput

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

        def __getattr__(self, name):  # everything else (checks, canvases) is the real pipeline's
            return getattr(original, name)

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
        with pytest.raises(InvalidArgumentError, match="PoseRequest"):
            gen.submit("request")
        bad = tmp_path / "bad.png"
        bad.write_text("nope")
        future = gen.submit(scenarios.t2(*samples("person_red_front"), bad, tile_size=(64, 64)))
        with pytest.raises(ValueError, match="not a readable image"):
            future.result(timeout=60)
        ok = gen.submit(_requests(samples, 1)[0]).result(timeout=60)  # the worker survived
        assert ok.targets


def _same_images(a, b) -> bool:
    return a.target_indices == b.target_indices and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip([*a.targets, a.canvas], [*b.targets, b.canvas]))


def test_a_bad_file_fails_only_its_own_request_in_a_batch(tiny_pipe, samples, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    missing = tmp_path / "missing.png"
    red, walking = samples("person_red_front"), samples("person_red_walking")
    good = _requests(samples, 2)
    bad_image = scenarios.t2(corrupt, red[1], walking[1], tile_size=(64, 64), seed=1)
    bad_pose = scenarios.t2(*red, missing, tile_size=(64, 64), seed=2)
    # max_wait long enough for the worker to take all four into one batch
    with IMAGPoseGenerator(tiny_pipe, max_batch=4, max_wait=10, num_inference_steps=STEPS) as gen:
        futures = [gen.submit(r) for r in (good[0], bad_image, good[1], bad_pose)]
        errors = [f.exception(timeout=300) for f in futures]
        stats = gen.stats
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], ImageInputError) and str(corrupt) in str(errors[1])
    assert isinstance(errors[3], IMAGPoseError) and str(missing) in str(errors[3])
    assert str(corrupt) not in str(errors[3])  # every request gets its own error
    assert stats.batches == [2] and stats.failed == 2 and stats.completed == 2
    for request, future in ((good[0], futures[0]), (good[1], futures[2])):
        alone = tiny_pipe(request, num_inference_steps=STEPS, progress=False).results[0]
        assert _same_images(future.result(), alone)


def test_a_failed_batched_call_is_retried_one_request_at_a_time(tiny_pipe, samples):
    """Two requests that fit the memory limit alone but not together: the batched call is refused, and each
    request then runs on its own and succeeds."""
    requests = [scenarios.t2(*samples("person_red_front"), samples("person_red_walking")[1], tile_size=(64, 64),
                             seed=seed) for seed in (5, 6)]
    layout = tiny_pipe.request_layout(requests[0])
    one, two = tiny_pipe.memory_estimate([layout]).peak, tiny_pipe.memory_estimate([layout] * 2).peak
    tiny_pipe.set_memory_limit((one + two) // 2)
    try:
        with pytest.raises(MemoryLimitError):
            tiny_pipe(requests, num_inference_steps=STEPS, progress=False)
        with IMAGPoseGenerator(tiny_pipe, max_batch=2, max_wait=10, num_inference_steps=STEPS) as gen:
            results = gen.generate(requests)
            stats = gen.stats
    finally:
        tiny_pipe.set_memory_limit(None)
    assert stats.batches == [1, 1] and stats.failed == 0
    for request, result in zip(requests, results):
        assert _same_images(result, tiny_pipe(request, num_inference_steps=STEPS, progress=False).results[0])


@pytest.mark.parametrize("settings, match", [
    (dict(guidance_scale=math.nan), "guidance_scale"),
    (dict(guidance_scale=math.inf), "guidance_scale"),
    (dict(eta=math.nan), "eta"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(output_type="np"), "output_type"),
    (dict(max_batch=0), "max_batch"),
    (dict(max_wait=math.nan), "max_wait"),
])
def test_bad_settings_fail_at_construction(tiny_pipe, settings, match):
    threads = threading.active_count()
    with pytest.raises(InvalidArgumentError, match=match):
        IMAGPoseGenerator(tiny_pipe, **settings)
    assert threading.active_count() == threads  # no worker was started


CTRL_C = """
import os, signal, sys, threading, time
# as in an interactive shell: a shell starts background jobs with SIGINT ignored, and Python then installs no handler
signal.signal(signal.SIGINT, signal.default_int_handler)
import torch
torch.set_num_threads(1)
from imagpose import build_pipeline, scenarios
from imagpose.samples import sample
from imagpose.sdk import IMAGPoseGenerator
pipe = build_pipeline("tiny", seed=0)
request = scenarios.t2(*sample("person_red_front"), sample("person_red_walking")[1], tile_size=(64, 64), seed=0)
with IMAGPoseGenerator(pipe, max_batch=1, num_inference_steps=50) as gen:
    futures = [gen.submit(request) for _ in range(12)]  # minutes of work
    def ctrl_c():
        print("SIGINT", time.time(), flush=True)
        os.kill(os.getpid(), signal.SIGINT)
    threading.Timer(2.0, ctrl_c).start()
    futures[-1].result()
"""


def test_ctrl_c_in_the_caller_ends_the_process_promptly(tmp_path):
    """Ctrl-C while waiting on a result: the queued requests fail, the running call stops after its current step,
    and the process exits instead of finishing the queue (the worker is a daemon thread)."""
    script = tmp_path / "ctrl_c.py"
    script.write_text(textwrap.dedent(CTRL_C))
    start = time.time()
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        stdout, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the process was still running 240 s after start (it finishes the queue instead of stopping)")
    ended = time.time()
    assert "KeyboardInterrupt" in stderr, (process.returncode, stdout[-2000:], stderr[-2000:])
    sigint = float(next(line.split()[1] for line in stdout.splitlines() if line.startswith("SIGINT")))
    print(f"exited {ended - sigint:.1f} s after Ctrl-C ({sigint - start:.1f} s after start)")
    assert ended - sigint < 20


def test_compare_throughput_runs_the_same_requests_both_ways(tiny_pipe, samples):
    requests = _requests(samples, 3)
    timing = compare_throughput(tiny_pipe, requests, repeats=1, max_batch=3, num_inference_steps=1,
                                output_type="latent")
    report = timing.as_dict()
    assert report["requests"] == 3 and len(report["sequential_runs"]) == len(report["sdk_runs"]) == 1
    assert timing.sequential_seconds > 0 and timing.sdk_seconds > 0
    assert report["speedup"] == pytest.approx(timing.sequential_seconds / timing.sdk_seconds)
    assert sum(timing.sdk_batches) == 3


@pytest.mark.bench
@pytest.mark.parametrize("through_worker", [False, True])
def test_batching_never_makes_throughput_worse(tiny_pipe, samples, through_worker):
    """20 requests of two canvas geometries, 2 steps: generate() (or submit() to the worker) against one
    pipe(request) after another on the same thread, alternating, medians of 3 (timing: in the bench tier, not the
    default one)."""
    timing = compare_throughput(tiny_pipe, _requests(samples, 20), repeats=3, max_batch=4, num_inference_steps=2,
                                through_worker=through_worker)
    print(timing.as_dict())
    assert timing.speedup >= 1.0


def test_a_pipeline_given_as_a_function_is_loaded_on_the_worker_thread(samples):
    from imagpose.loading import load_pipeline

    loaded_on = []

    def load():
        loaded_on.append(threading.get_ident())
        return load_pipeline(preset="tiny", weights_seed=0)

    (request,) = _requests(samples, 1)
    with IMAGPoseGenerator(load, num_inference_steps=STEPS) as gen:
        worker = gen.run_on_worker(threading.get_ident).result(timeout=60)
        result = gen.submit(request).result(timeout=300)
    assert loaded_on == [worker] and worker != threading.get_ident()
    assert _same_images(result, gen.pipe(request, num_inference_steps=STEPS, progress=False).results[0])


def test_a_loader_that_fails_or_returns_no_pipeline_fails_the_constructor_and_leaves_no_thread():
    threads = threading.active_count()

    def broken():
        raise FileNotFoundError("no such model")

    with pytest.raises(FileNotFoundError, match="no such model"):
        IMAGPoseGenerator(broken)
    with pytest.raises(InvalidArgumentError, match="takes an IMAGPosePipeline or a function that returns one, got "
                                                   "str"):
        IMAGPoseGenerator(lambda: "tiny")
    assert threading.active_count() == threads


def test_calls_run_on_the_worker_in_queue_order_between_batches(tiny_pipe, samples):
    order = []
    requests = _requests(samples, 2)
    with IMAGPoseGenerator(tiny_pipe, max_batch=4, max_wait=0.0, num_inference_steps=STEPS) as gen:
        first = gen.submit(requests[0])
        call = gen.run_on_worker(lambda: order.append(("call", first.done())) or "answer")
        second = gen.submit(requests[1])
        failing = gen.run_on_worker(lambda: 1 / 0)
        assert call.result(timeout=300) == "answer" and second.result(timeout=300) is not None
        with pytest.raises(ZeroDivisionError):
            failing.result(timeout=60)
    assert order == [("call", True)]  # the request queued before it had finished
    with pytest.raises(GeneratorClosedError):
        gen.run_on_worker(print)


def test_the_fast_sampling_options_reach_every_call(tiny_pipe, samples):
    """Sampler, guidance interval and DeepCache given to the generator are the pipeline's, request by request."""
    options = dict(sampler="unipc", guidance_interval=(0.0, 0.5), deepcache_interval=2, deepcache_branch=0)
    requests = _requests(samples, 3)[:2]
    with IMAGPoseGenerator(tiny_pipe, num_inference_steps=4, **options) as gen:
        results = gen.generate(requests)
    for request, result in zip(requests, results):
        alone = tiny_pipe(request, num_inference_steps=4, progress=False, **options).results[0]
        plain = tiny_pipe(request, num_inference_steps=4, progress=False).results[0]
        ours, theirs = np.asarray(result.targets[0], np.int16), np.asarray(alone.targets[0], np.int16)
        # unguided steps run B rows, and PyTorch's CPU convolutions round batch 1 and batch 2 differently (latents
        # within 3e-6): at most one level, where the guided-on-every-step path above is exact
        assert np.abs(ours - theirs).max() <= 1
        assert np.abs(ours - np.asarray(plain.targets[0], np.int16)).max() > 10  # the options did change the image


@pytest.mark.parametrize("options, words", [
    (dict(sampler="euler"), "sampler"),
    (dict(sampler="unipc", eta=0.5), "eta"),
    (dict(guidance_interval=(0.7, 0.2)), "empty or inverted"),
    (dict(guidance_scale=1.0, guidance_interval=(0.0, 0.5)), "turns off"),
    (dict(deepcache_interval=0), "deepcache"),
    (dict(deepcache_branch=1), "deepcache_interval"),
])
def test_bad_fast_sampling_options_are_refused_when_the_generator_is_made(tiny_pipe, options, words):
    with pytest.raises(InvalidArgumentError, match=words):
        IMAGPoseGenerator(tiny_pipe, **options)
