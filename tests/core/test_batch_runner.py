"""The batching core the SDK and both servers share: one outcome per request, calls by geometry, isolated failures."""

import numpy as np
import pytest

from imagpose import scenarios
from imagpose.batch_runner import run_isolated
from imagpose.errors import MemoryLimitError
from imagpose.images import ImageInputError
from imagpose.sampling_config import SamplingConfig

SAMPLING = SamplingConfig(num_inference_steps=2)


def _request(samples, seed, tile_size=(64, 64)):
    return scenarios.t2(*samples("person_red_front"), samples("person_red_walking")[1], tile_size=tile_size,
                        seed=seed)


def _alone(pipe, request):
    return pipe(request, sampling=SAMPLING, progress=False).results[0]


def _same(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip([*a.targets, a.canvas],
                                                                           [*b.targets, b.canvas]))


def test_each_request_gets_its_own_outcome_and_calls_follow_geometry_and_max_batch(tiny_pipe, samples, tmp_path):
    missing = tmp_path / "missing.png"
    requests = [_request(samples, 1), _request(samples, 2, (64, 96)), scenarios.t2(
        *samples("person_red_front"), missing, tile_size=(64, 64), seed=3), _request(samples, 4),
        _request(samples, 5)]
    call_sizes = []
    outcomes = run_isolated(tiny_pipe, requests, SAMPLING, max_batch=2, call_sizes=call_sizes)
    assert isinstance(outcomes[2], ImageInputError) and str(missing) in str(outcomes[2])
    # 64x64: requests 0, 3, 4 -> calls of 2 and 1; 64x96: request 1 alone
    assert sorted(call_sizes) == [1, 1, 2] and len(call_sizes) == 3
    for index in (0, 1, 3, 4):
        assert _same(outcomes[index], _alone(tiny_pipe, requests[index]))


@pytest.mark.parametrize("retry", [True, False])
def test_a_failed_call_is_retried_alone_unless_refused(tiny_pipe, samples, retry):
    """Two requests that fit the memory limit alone but not together: their call fails; retried, both succeed."""
    requests = [_request(samples, seed) for seed in (6, 7)]
    layout = tiny_pipe.request_layout(requests[0])
    one, two = tiny_pipe.memory_estimate([layout]).peak, tiny_pipe.memory_estimate([layout] * 2).peak
    tiny_pipe.set_memory_limit((one + two) // 2)
    call_sizes = []
    try:
        outcomes = run_isolated(tiny_pipe, requests, SAMPLING, max_batch=2, retry=lambda exc: retry,
                                call_sizes=call_sizes)
    finally:
        tiny_pipe.set_memory_limit(None)
    if retry:
        assert call_sizes == [1, 1]
        assert all(_same(outcome, _alone(tiny_pipe, request)) for outcome, request in zip(outcomes, requests))
    else:
        assert call_sizes == [] and all(isinstance(outcome, MemoryLimitError) for outcome in outcomes)
