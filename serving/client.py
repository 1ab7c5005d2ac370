"""The interface of every client of a served pipeline, whatever serves it (:func:`imagpose.serving.connect.connect`
makes one), and what the clients share: the answer timeout, its error, how a server's message is shown.

``generate`` takes the pipeline's request objects and returns the pipeline's result type
(:class:`~imagpose.pipeline.GenerationResult`, PIL images), in request order; several requests are sent
concurrently, so the server may batch them.
"""

from __future__ import annotations

from typing import Protocol

from imagpose.canvas import PoseRequest
from imagpose.errors import IMAGPoseError
from imagpose.pipeline import GenerationResult
from imagpose.sampling_config import SamplingConfig

DEFAULT_TIMEOUT_S = 600.0  # one answer; a 20-step request of the tiny model takes seconds, SD-1.5's on a CPU minutes


MAX_SERVER_MESSAGE_CHARS = 2000  # a server's error text shown to the user; the rest is in the server's log


def clipped_server_message(text: str) -> str:
    """A server's error message as a client shows it: at most :data:`MAX_SERVER_MESSAGE_CHARS` characters."""
    if len(text) <= MAX_SERVER_MESSAGE_CHARS:
        return text
    return f"{text[:MAX_SERVER_MESSAGE_CHARS]}... [{len(text) - MAX_SERVER_MESSAGE_CHARS} more characters]"


class ServerTimeoutError(IMAGPoseError, TimeoutError):
    """A server accepted the connection and did not answer within the client's timeout."""

    def __init__(self, url: str, timeout: float):
        super().__init__(f"No answer from the server at {url} within {timeout:g} s; it may be overloaded or hung "
                         "(its log says which), or the request may need longer: raise the timeout "
                         "(--server-timeout).")


class GenerationClient(Protocol):
    url: str

    def generate(self, requests: PoseRequest | list[PoseRequest],
                 sampling: SamplingConfig | dict | None = None) -> list[GenerationResult]:
        """One result per request. ``sampling``: a whole SamplingConfig, a dict of some of its fields (the served
        model's defaults fill the rest) or None (the served model's defaults: the paper's, or a distilled
        student's few-step sampling)."""
        ...

    def ready(self) -> bool: ...

    def batch_sizes(self) -> dict[int, int]:
        """How many batches of each size the server formed for generation requests since it started."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> GenerationClient: ...

    def __exit__(self, *exc) -> None: ...
