"""The client of the Ray Serve HTTP service (:mod:`imagpose.serving.ray_service`), one
:class:`~imagpose.serving.client.GenerationClient`.

    with RayServeClient("http://127.0.0.1:8000") as client:
        results = client.generate([request1, request2], SamplingConfig(num_inference_steps=20))

``generate`` posts each request on a thread pool (``requests``, one session per thread, so connections are kept
alive), so the service can batch them, and returns the results in request order. An answer 4xx (the request's
fault) raises :class:`~imagpose.errors.InvalidArgumentError` with the server's message; an unreachable server
raises :class:`ServerUnreachableError`; a 5xx (a bug on the server) raises :class:`ServerError`.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import requests as http

from imagpose.canvas import PoseRequest
from imagpose.errors import IMAGPoseError, InvalidArgumentError
from imagpose.json_parsing import parse_json
from imagpose.pipeline import GenerationResult
from imagpose.sampling_config import SamplingConfig

from .client import DEFAULT_TIMEOUT_S, ServerTimeoutError, clipped_server_message
from .wire import WireFormatError, request_to_json, result_from_json


class ServerUnreachableError(IMAGPoseError, ConnectionError):
    """No answer from the server's address; check the URL and that the server runs."""


class ServerError(RuntimeError):
    """The server failed on a bug (HTTP 5xx); its log has the traceback."""


class RayServeClient:
    """A client of the Ray Serve service at ``url`` (``http://host:port``).

    Args:
        timeout: seconds to wait for one answer.
        max_workers: most requests in flight at once from one ``generate`` call.
    """

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT_S, max_workers: int = 16):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidArgumentError(f"The Ray Serve client takes an http:// or https:// URL, got {url!r}.")
        self.url, self.timeout = url.rstrip("/"), timeout
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="imagpose-ray-client")
        self._local = threading.local()
        self._sessions: list[http.Session] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ GenerationClient
    def generate(self, requests: PoseRequest | list[PoseRequest],
                 sampling: SamplingConfig | dict | None = None) -> list[GenerationResult]:
        if isinstance(requests, PoseRequest):
            requests = [requests]
        bodies = [request_to_json(request, sampling) for request in requests]
        answers = list(self._pool.map(self.post_generate, bodies))  # in order; the first failure is raised
        return [result_from_json(answer) for answer in answers]

    def post_generate(self, body: dict) -> dict:
        """POST one wire-format request; its wire-format result (errors as in the module docstring)."""
        response = self._request("post", "/generate", json=body)
        try:
            return parse_json(response.content)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise WireFormatError(f"{self.url}/generate answered with something that is not JSON ({exc}).") from exc

    def ready(self) -> bool:
        try:
            return self._session().get(f"{self.url}/readyz", timeout=min(self.timeout, 30)).status_code == 200
        except http.RequestException:
            return False

    def batch_sizes(self) -> dict[int, int]:
        stats = self.stats()
        return {int(size): count for size, count in stats["batch_sizes"].items()}

    def stats(self) -> dict:
        """The service's /stats: batch sizes formed, requests served and failed."""
        return self._request("get", "/stats").json()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def __enter__(self) -> RayServeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ HTTP
    def _session(self) -> http.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = http.Session()
            with self._lock:
                self._sessions.append(session)
        return session

    def _request(self, method: str, path: str, **kwargs) -> http.Response:
        try:
            response = self._session().request(method, f"{self.url}{path}", timeout=self.timeout, **kwargs)
        except http.ReadTimeout as exc:  # connected, no answer (a connect timeout is unreachable, below)
            raise ServerTimeoutError(self.url, self.timeout) from exc
        except http.ConnectionError as exc:
            raise ServerUnreachableError(f"No answer from {self.url} ({exc}); check the URL and that the service "
                                         "runs (`imagpose serve`).") from exc
        if 400 <= response.status_code < 500:
            raise InvalidArgumentError(f"{self.url}{path} refused the request ({response.status_code}): "
                                       f"{_message(response)}")
        if response.status_code >= 500:
            raise ServerError(f"{self.url}{path} failed ({response.status_code}): {_message(response)}")
        return response


def _message(response: http.Response) -> str:
    try:
        data = parse_json(response.content)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return clipped_server_message(response.text)
    message = data.get("message") if isinstance(data, dict) else None
    return clipped_server_message(message if isinstance(message, str) and message else str(data))
