"""Running many requests so that each one succeeds or fails on its own: the batching core of the SDK
(:mod:`imagpose.sdk`), the Ray Serve replica and the Triton orchestrator, which keep only their transport.

    outcomes = run_isolated(pipe, requests, sampling, max_batch=4)
    # outcomes[i]: the GenerationResult of requests[i], or the exception that request failed with

1. Each request is checked, its memory estimated and its canvas built alone (bad images, bad poses, the memory
   limit show up here): a request that fails here fails alone, before any network runs.
2. The good requests are grouped by canvas geometry (requests of one geometry share every UNet call) into pipeline
   calls of at most ``max_batch`` requests, in the order they came.
3. A call that fails is run again one request at a time, so only the culprit fails (``retry`` can refuse the
   retry, e.g. once the caller has gone).

Every request must carry its seed (its result then does not depend on what it was batched with).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

from .canvas import JointCanvas, PoseRequest
from .pipeline import GenerationResult
from .sampling_config import SamplingConfig

Outcome = GenerationResult | BaseException


def run_isolated(pipe, requests: list[PoseRequest], sampling: SamplingConfig, *, max_batch: int,
                 runtime=None, output_type: str = "pil", callback_on_step_end: Callable | None = None,
                 retry: Callable[[BaseException], bool] = lambda exc: True,
                 call_sizes: list[int] | None = None, call_lock=None) -> list[Outcome]:
    """The outcome of every request: its :class:`~imagpose.pipeline.GenerationResult` or its exception (in order).

    ``runtime``, ``output_type`` and ``callback_on_step_end`` are passed to every pipeline call; ``retry(exc)``
    says whether a failed call of several requests is run again one request at a time (default: always);
    ``call_sizes``, when given, receives the number of requests of every pipeline call that succeeded;
    ``call_lock`` (a lock, or any reusable context manager), when given, is held around each pipeline call.
    Exceptions are returned, never raised: the caller decides which are the user's (``IMAGPoseError``) and which
    are bugs to log.
    """
    outcomes: list[Outcome | None] = [None] * len(requests)
    call_lock = call_lock if call_lock is not None else nullcontext()
    device = pipe._execution_device  # once: diffusers finds it by walking every module
    groups: dict = {}
    for index, request in enumerate(requests):
        try:
            canvas = _prepare(pipe, request, sampling, output_type, device)
        except Exception as exc:  # noqa: BLE001 - the request's own error (or our bug) is its outcome alone
            outcomes[index] = exc
            continue
        groups.setdefault(canvas.layout, []).append((index, request, canvas))
    for members in groups.values():
        for start in range(0, len(members), max_batch):
            _call(pipe, members[start:start + max_batch], sampling, outcomes, retry, call_sizes,
                  call_lock, dict(runtime=runtime, output_type=output_type, callback_on_step_end=callback_on_step_end))
    return outcomes


def _prepare(pipe, request: PoseRequest, sampling: SamplingConfig, output_type: str, device) -> JointCanvas:
    pipe.check_inputs(request, output_type, generator=None)
    pipe.check_memory([pipe.request_layout(request)], sampling.guidance_scale, output_type, device)
    return pipe.build_canvas(request)


def _call(pipe, members: list[tuple[int, PoseRequest, JointCanvas]], sampling: SamplingConfig, outcomes: list,
          retry: Callable[[BaseException], bool], call_sizes: list[int] | None, call_lock,
          call_arguments: dict) -> None:
    try:
        with call_lock:
            results = pipe([request for _, request, _ in members], canvases=[canvas for _, _, canvas in members],
                           progress=False, sampling=sampling, **call_arguments).results
    except Exception as exc:  # noqa: BLE001 - an outcome, never raised here
        if len(members) > 1 and retry(exc):
            for member in members:
                _call(pipe, [member], sampling, outcomes, retry, call_sizes, call_lock, call_arguments)
            return
        for index, _, _ in members:
            outcomes[index] = exc
        return
    for (index, _, _), result in zip(members, results):
        outcomes[index] = result
    if call_sizes is not None:
        call_sizes.append(len(members))
