"""A client of the ``imagpose`` model of a Triton server, over HTTP (``http://``) or gRPC (``grpc://``).

    with TritonClient("http://localhost:8000") as client:
        results = client.generate([request1, request2], SamplingConfig(num_inference_steps=20))

Each request travels in the wire format (:mod:`imagpose.serving.wire`) as one BYTES tensor; several are sent
concurrently, so the server's dynamic batcher can run them as one pipeline call. A request the server refuses
(HTTP 400 / gRPC INVALID_ARGUMENT) raises :class:`~imagpose.errors.InvalidArgumentError` with the server's message.
"""

from __future__ import annotations

import json
from concurrent.futures import Future

import numpy as np

from imagpose.canvas import PoseRequest
from imagpose.errors import IMAGPoseError, InvalidArgumentError, MissingDependencyError
from imagpose.pipeline import GenerationResult
from imagpose.sampling_config import SamplingConfig

from ..client import DEFAULT_TIMEOUT_S, ServerTimeoutError, clipped_server_message
from ..wire import request_to_json, result_from_json
from .model_configs import ORCHESTRATOR, REQUEST_INPUT, RESULT_OUTPUT

REFUSED = ("400", "StatusCode.INVALID_ARGUMENT")  # HTTP and gRPC forms of INVALID_ARG
TIMED_OUT = "StatusCode.DEADLINE_EXCEEDED"  # gRPC's client_timeout
NOT_FOUND = ("404", "StatusCode.NOT_FOUND", "StatusCode.UNIMPLEMENTED")  # no such model, or not a Triton server


class ServerError(IMAGPoseError, RuntimeError):
    """The server could not be reached, or failed a request for a reason of its own (its log has the details)."""


class TritonClient:
    """Args:
        url: ``http://host:port`` (Triton's HTTP port, 8000 by default) or ``grpc://host:port`` (8001).
        model: the orchestrator model's name.
        concurrency: requests in flight at once (HTTP connections).
        timeout: seconds one request may take.
    """

    def __init__(self, url: str, model: str = ORCHESTRATOR, concurrency: int = 16,
                 timeout: float = DEFAULT_TIMEOUT_S):
        scheme, _, address = url.partition("://")
        if scheme not in ("http", "grpc") or not address:
            raise InvalidArgumentError(f"A Triton URL is http://HOST:PORT or grpc://HOST:PORT, got {url!r}.")
        self.url, self.model, self.timeout, self.protocol = url, model, timeout, scheme
        try:
            if scheme == "http":
                import tritonclient.http as triton
            else:
                import tritonclient.grpc as triton
            from tritonclient.utils import InferenceServerException
        except ImportError as exc:
            raise MissingDependencyError("The Triton client needs tritonclient: pip install -c constraints.txt "
                                         "'imagpose[serve]'.") from exc
        self._triton, self._exception = triton, InferenceServerException
        if scheme == "http":
            self._client = triton.InferenceServerClient(address, concurrency=concurrency, connection_timeout=timeout,
                                                        network_timeout=timeout)
            # tritonclient.http waits in gevent greenlets, whose hub prints a traceback for every one that fails;
            # a timeout is reported once, as ServerTimeoutError, instead
            from gevent import get_hub

            hub = get_hub()
            hub.NOT_ERROR = (*hub.NOT_ERROR, TimeoutError)
        else:
            self._client = triton.InferenceServerClient(address)

    # ------------------------------------------------------------------ generation
    def generate(self, requests: PoseRequest | list[PoseRequest],
                 sampling: SamplingConfig | dict | None = None) -> list[GenerationResult]:
        """The results of ``requests`` (PIL images), in order; all are sent before the first answer is awaited."""
        requests = [requests] if isinstance(requests, PoseRequest) else list(requests)
        payloads = [json.dumps(request_to_json(request, sampling)).encode() for request in requests]
        pending = [self._submit(payload) for payload in payloads]
        return [result_from_json(self._answer(wait)) for wait in pending]

    def infer_json(self, payload: bytes) -> bytes:
        """One wire-format request as bytes in, the wire-format result out (for clients of other languages'
        requests, and tests)."""
        return self._answer(self._submit(payload))

    def _inputs(self, payload: bytes):
        tensor = self._triton.InferInput(REQUEST_INPUT, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[payload]], dtype=np.object_))
        return [tensor], [self._triton.InferRequestedOutput(RESULT_OUTPUT)]

    def _submit(self, payload: bytes):
        inputs, outputs = self._inputs(payload)
        try:
            if self.protocol == "http":
                handle = self._client.async_infer(self.model, inputs, outputs=outputs)
                return lambda: handle.get_result()
            future: Future = Future()

            def done(result, error):
                future.set_exception(error) if error is not None else future.set_result(result)

            self._client.async_infer(self.model, inputs, done, outputs=outputs, client_timeout=self.timeout)
            return lambda: future.result()
        except (self._exception, OSError) as exc:
            error = self._error(exc)
            return lambda: (_ for _ in ()).throw(error)

    def _answer(self, wait) -> bytes:
        try:
            result = wait()
        except (self._exception, OSError) as exc:
            raise self._error(exc) from exc
        return result.as_numpy(RESULT_OUTPUT).reshape(-1)[0]

    def _error(self, exc) -> IMAGPoseError:
        if isinstance(exc, TimeoutError) or (isinstance(exc, self._exception) and str(exc.status()) == TIMED_OUT):
            return ServerTimeoutError(self.url, self.timeout)
        if isinstance(exc, self._exception):
            if str(exc.status()) in NOT_FOUND:
                return InvalidArgumentError(
                    f"{self.url} has no Triton model {self.model!r} ({exc.status()}). If it is imagpose's Ray Serve "
                    "service, use --server-kind ray (connect(url, kind='ray')); a Triton server lists its models at "
                    "/v2/repository/index.")
            if str(exc.status()) in REFUSED:
                return InvalidArgumentError(f"The server at {self.url} refused the request: "
                                            f"{clipped_server_message(exc.message())}")
            return ServerError(f"The server at {self.url} failed the request ({exc.status()}): "
                               f"{clipped_server_message(exc.message())}. "
                               "Its log has the details.")
        return ServerError(f"Cannot reach a Triton server at {self.url} ({exc}); start one "
                           "(docs/serving.md) or check the URL.")

    # ------------------------------------------------------------------ state
    def ready(self) -> bool:
        """The server and the orchestrator model are ready."""
        try:
            return bool(self._client.is_server_ready() and self._client.is_model_ready(self.model))
        except (self._exception, OSError):
            return False

    def batch_sizes(self) -> dict[int, int]:
        """{batch size: executions} the orchestrator ran since the server started (Triton's statistics API)."""
        stats = self._call(self._client.get_inference_statistics, model_name=self.model)
        sizes = {}
        for model in stats["model_stats"]:
            if model["name"] == self.model:
                for row in model.get("batch_stats", []):
                    count = int(row["compute_infer"]["count"])
                    sizes[int(row["batch_size"])] = sizes.get(int(row["batch_size"]), 0) + count
        return dict(sorted(sizes.items()))

    def model_states(self) -> dict[str, tuple[str, str]]:
        """{model: (state, reason)} from the repository index: why a model is not ready (UNAVAILABLE: its error)."""
        index = self._call(self._client.get_model_repository_index)
        models = index.get("models", []) if isinstance(index, dict) else index
        return {m["name"]: (m.get("state", ""), m.get("reason", "")) for m in models}

    def _call(self, method, **kwargs):
        if self.protocol == "grpc":
            kwargs["as_json"] = True
        try:
            return method(**kwargs)
        except (self._exception, OSError) as exc:
            raise self._error(exc) from exc

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
