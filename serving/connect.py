"""A client of a served pipeline, by the kind of server: one interface
(:class:`~imagpose.serving.client.GenerationClient`) whatever serves it.

    with connect("http://localhost:8000") as client:            # Triton over HTTP (default kind)
        results = client.generate([request1, request2], SamplingConfig(num_inference_steps=20))
    connect("grpc://localhost:8001")                             # Triton over gRPC
    connect("http://localhost:8000", kind="ray")                 # the Ray Serve HTTP service
"""

from __future__ import annotations

from imagpose.errors import InvalidArgumentError

from . import SERVER_KINDS
from .client import GenerationClient


def connect(url: str, kind: str = "triton", **options) -> GenerationClient:
    """A client for ``url``: ``kind`` "triton" (``http://`` or ``grpc://``) or "ray" (``http://``)."""
    if kind not in SERVER_KINDS:
        raise InvalidArgumentError(f"Unknown server kind {kind!r}; choose from {', '.join(SERVER_KINDS)}.")
    if kind == "triton":
        from .triton.client import TritonClient

        return TritonClient(url, **options)
    from .ray_client import RayServeClient

    return RayServeClient(url, **options)
