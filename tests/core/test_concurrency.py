"""One pipeline called from several threads at once gives every call the result it gives alone."""

import threading

import pytest
import torch

from imagpose import scenarios

CALLS_PER_THREAD = 4


@pytest.fixture(scope="module")
def requests(samples):
    red, walking, side = samples("person_red_front"), samples("person_red_walking"), samples("person_red_side")
    return {2: scenarios.t2(*red, walking[1], tile_size=(64, 64), seed=11),
            5: scenarios.t1(*red, side[1], tile_size=(64, 64), seed=12)}


def test_two_threads_with_different_step_counts_get_their_solo_results(tiny_pipe, requests):
    """Threads running 2 and 5 DDIM steps at the same time. Each call steps a scheduler of its own, so the
    other thread's ``set_timesteps`` cannot change its timesteps mid-loop. Compared bitwise: every call runs the
    same ops on the same shapes with the same intra-op thread count, and CPU kernels are deterministic for that."""
    def run(steps):
        return tiny_pipe(requests[steps], num_inference_steps=steps, output_type="pt", progress=False).results[0]

    alone = {steps: run(steps) for steps in requests}
    outcomes = {steps: [] for steps in requests}
    start = threading.Barrier(len(requests))

    def worker(steps):
        start.wait()
        for _ in range(CALLS_PER_THREAD):
            outcomes[steps].append(run(steps))

    threads = [threading.Thread(target=worker, args=(steps,)) for steps in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    for steps, results in outcomes.items():
        assert len(results) == CALLS_PER_THREAD
        for result in results:
            torch.testing.assert_close(result.latents, alone[steps].latents, rtol=0, atol=0)
            torch.testing.assert_close(result.canvas, alone[steps].canvas, rtol=0, atol=0)


def test_the_shared_scheduler_is_left_untouched(tiny_pipe, requests):
    before = tiny_pipe.scheduler.timesteps.clone()
    tiny_pipe(requests[2], num_inference_steps=2, output_type="latent", progress=False)
    assert torch.equal(tiny_pipe.scheduler.timesteps, before)
