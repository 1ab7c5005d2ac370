"""Clients of a served pipeline, one interface whatever serves it.

    with connect("http://localhost:8000") as client:            # Triton over HTTP (default kind)
        results = client.generate([request1, request2], SamplingConfig(num_inference_steps=20))
    connect("grpc://localhost:8001")                             # Triton over gRPC
    connect("http://localhost:8000", kind="ray")                 # the Ray Serve HTTP service

``generate`` takes the pipeline's request objects and returns the pipeline's result type
(:class:`~imagpose.pipeline.GenerationResult`, PIL images), in request order; several requests are sent
concurrently, so the server may batch them.
"""

from __future__ import annotations

from typing import Protocol

from imagpose.canvas import PoseRequest
from imagpose.errors import IMAGPoseError, InvalidArgumentError
from imagpose.pipeline import GenerationResult
from imagpose.sampling_config import SamplingConfig

from . import SERVER_KINDS

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
                 sampling: SamplingConfig | None = None) -> list[GenerationResult]: ...

    def ready(self) -> bool: ...

    def batch_sizes(self) -> dict[int, int]:
        """How many batches of each size the server formed for generation requests since it started."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> GenerationClient: ...

    def __exit__(self, *exc) -> None: ...


def connect(url: str, kind: str = "triton", **options) -> GenerationClient:
    """A client for ``url``: ``kind`` "triton" (``http://`` or ``grpc://``) or "ray" (``http://``)."""
    if kind not in SERVER_KINDS:
        raise InvalidArgumentError(f"Unknown server kind {kind!r}; choose from {', '.join(SERVER_KINDS)}.")
    if kind == "triton":
        from .triton.client import TritonClient

        return TritonClient(url, **options)
    from .ray_client import RayServeClient

    return RayServeClient(url, **options)
