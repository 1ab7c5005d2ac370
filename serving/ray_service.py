"""An HTTP service on Ray Serve: the pipeline behind FastAPI, requests batched into the pipeline's batched call.

    service = serve_pipeline()                       # the shipped trained model, local Ray, http://127.0.0.1:8000
    print(service.url)                                # POST {url}/generate with a wire-format request
    service.shutdown()

Two deployments in one Serve application:

    HTTPIngress       FastAPI (one replica, no CPU reserved: it only awaits): POST /generate, GET /healthz,
                      /readyz, /stats, /docs. Reads the body as JSON, hands it to a pipeline replica, answers the
                      wire-format result (or PNG tiles) or an error, and keeps the counts /stats reports.
    PipelineReplica   one pipeline per replica (``num_replicas`` fixed or autoscaled; ``num_cpus`` each, 0.25 by
                      default so several fit on two cores). ``@serve.batch`` gathers up to ``max_batch`` requests
                      (waiting at most ``batch_wait`` seconds after the first); the batch is parsed request by
                      request (a bad one fails alone, as in :mod:`imagpose.sdk`), grouped by its sampling settings,
                      and each group is ONE pipeline call. When a batched call fails, its requests run again one by
                      one, so only the culprit fails.

Errors: a problem with the request (:class:`~imagpose.errors.IMAGPoseError`: a malformed field, a refused setting,
a request over the memory limit) is a JSON error ``{"error": type, "message": ...}`` with status 422 (400 when the
body is not JSON at all), and the service goes on serving. Anything else is a bug: status 500, its traceback in
the replica's log (``ray.serve`` logger; under ``/tmp/ray/session_latest/logs/serve/`` on a local run).

``?format=png`` answers PNG tiles instead of JSON: one target is ``image/png``; several are an ``application/zip``
of ``target_<tile index>.png`` files (a zip, not multipart: every HTTP client and ``unzip`` read it). The seed and
name come in the ``X-Imagpose-Seed`` and ``X-Imagpose-Name`` headers.

Batch sizes: each replica counts the batches ``@serve.batch`` formed and sends its running totals with every
answer; the ingress keeps the latest totals of each replica, so ``/stats`` adds up every replica's batches (a
replica's last batch shows once one of its answers reaches the ingress). They also go to Ray's metrics
(``ray.serve.metrics`` Histogram ``imagpose_batch_size``, scraped from each node's metrics port).

Ray: a local Ray is started with this machine's CPUs, no dashboard and ``RAY_AUTH_MODE=disabled`` (Ray writes no
token into the home folder); ``address`` joins a running cluster instead ("auto", or ``ray://HEAD:10001``), whose
nodes need imagpose installed (and ``model_dir`` at the same path; the shipped model is inside the package).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations (Request) at runtime.

import asyncio
import io
import json
import logging
import os
import re
import socket
import time
import traceback
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve import metrics

from imagpose.errors import IMAGPoseError, InvalidArgumentError
from imagpose.json_parsing import parse_json

from .request_limits import MAX_REQUEST_BYTES, RequestTooLargeError
from .service_config import ServiceConfig, check_num_cpus, check_positive_int, parse_autoscale

APP_NAME = "imagpose"
FORMATS = ("json", "png")
BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64]
logger = logging.getLogger("ray.serve")  # Serve writes this logger to the replica's log file


# ---------------------------------------------------------------------------------------------------- replicas
def _error(exc: BaseException) -> dict:
    """The outcome of a failed request: the user's problem (422) or our bug (500, traceback in the log)."""
    if isinstance(exc, IMAGPoseError):
        return {"status": 422, "error": type(exc).__name__, "message": str(exc)}
    logger.error("imagpose: a request failed on a bug:\n%s",
                 "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return {"status": 500, "error": type(exc).__name__,
            "message": f"Internal error ({type(exc).__name__}: {exc}); the traceback is in the server log."}


@serve.deployment(name="PipelineReplica")
class PipelineReplica:
    """One pipeline; ``generate`` is batched by Serve (see the module docstring)."""

    def __init__(self, config: ServiceConfig):
        import torch

        self.config = config
        self.pipe, self.runtime = _load_pipeline(config)
        # Every pipeline call runs on this one thread: the event loop stays free to answer and to gather the next
        # batch, and PyTorch keeps one OpenMP pool (see imagpose.sdk on pools per thread).
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="imagpose-pipeline")
        self.generate.set_max_batch_size(config.max_batch)
        self.generate.set_batch_wait_timeout_s(config.batch_wait)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.batches: dict[int, int] = {}  # batch size -> count, since this replica started
        self.batch_count = 0
        self.batch_histogram = metrics.Histogram(
            "imagpose_batch_size", description="Requests per batch formed by @serve.batch on a pipeline replica.",
            boundaries=BATCH_SIZE_BUCKETS)
        logger.info("imagpose: %s loaded (runtime %s, %d torch threads), batches of up to %d, wait %.3f s",
                    config.model_name, config.runtime, torch.get_num_threads(), config.max_batch, config.batch_wait)

    def info(self) -> dict:
        return {"model": self.config.model_name, "runtime": self.config.runtime, "replica": self.replica,
                "max_batch": self.config.max_batch, "batch_wait": self.config.batch_wait}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)  # the service's settings are applied in __init__
    async def generate(self, bodies: list[dict]) -> list[dict]:
        size = len(bodies)
        self.batches[size] = self.batches.get(size, 0) + 1
        self.batch_count += 1
        self.batch_histogram.observe(size)
        totals = {"replica": self.replica, "count": self.batch_count, "batch_sizes": dict(self.batches)}
        outcomes = await asyncio.get_running_loop().run_in_executor(self.executor, self._run_batch, bodies)
        return [{**outcome, "batches": totals} for outcome in outcomes]

    def _run_batch(self, bodies: list[dict]) -> list[dict]:
        """Parse each request on its own, then each group of equal sampling settings through the batching core."""
        from imagpose.batch_runner import run_isolated
        from imagpose.serving.wire import request_from_json, result_to_json

        outcomes: list[dict | None] = [None] * len(bodies)
        groups: dict = {}
        for index, body in enumerate(bodies):
            try:
                wire = request_from_json(body)
                sampling = wire.sampling(self.pipe)
            except Exception as exc:  # noqa: BLE001 - this request's own error (or our bug) answers it alone
                outcomes[index] = _error(exc)
                continue
            groups.setdefault(sampling, []).append((index, wire.request))
        for sampling, members in groups.items():
            results = run_isolated(self.pipe, [request for _, request in members], sampling,
                                   max_batch=self.config.max_batch, runtime=self.runtime)
            for (index, _), outcome in zip(members, results):
                outcomes[index] = (_error(outcome) if isinstance(outcome, BaseException)
                                   else {"status": 200, "result": result_to_json(outcome)})
        return outcomes


def _load_pipeline(config: ServiceConfig):
    from imagpose.loading import load_pipeline

    pipe = load_pipeline(config.model_dir, preset=config.preset, weights_seed=config.weights_seed)
    if config.runtime == "torch":
        return pipe, None
    from imagpose.export import ShapeBucket
    from imagpose.export.runtime import prepare_runtime

    # The UNet graph bakes in the 2x2 grid (as `imagpose generate --runtime onnxruntime`); tile sizes stay dynamic.
    work_dir = config.work_dir or str(Path("outputs/runtimes", config.model_name).absolute())
    return pipe, prepare_runtime(config.runtime, pipe, work_dir, ShapeBucket(1, 64, 64, 2, 2))


# ---------------------------------------------------------------------------------------------------- HTTP
app = FastAPI(title="imagpose", description="IMAGPose pose-guided person generation, batched on Ray Serve. "
              "Requests and results use the wire format of imagpose.serving.wire.")

WIRE_REQUEST_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "description": "A wire-format request (imagpose.serving.wire.request_to_json): grid, "
    "tile_size, seed, reference, name, views [{image: base64 PNG | null, pose: base64 PNG | openpose18 keypoints}], "
    "settings {num_inference_steps, guidance_scale, sampler, eta, guidance_interval, deepcache}."}}}}


def _error_response(status: int, error: str, message: str) -> JSONResponse:
    return JSONResponse({"error": error, "message": message}, status_code=status)


def attachment_name(name: str | None) -> str:
    """A file name made from a request's free-text ``name`` for Content-Disposition: every character outside
    [A-Za-z0-9._-] (path separators, quotes, CR/LF, non-ASCII) becomes "_", at most 64 characters, no leading
    dots; "targets" when nothing is left. (The name itself travels percent-encoded in X-Imagpose-Name.)"""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name or "")[:64].lstrip(".")
    return safe if safe.strip("_") else "targets"


def _png_response(result: dict) -> Response:
    import base64

    headers = {"X-Imagpose-Seed": str(result["seed"]), "X-Imagpose-Name": quote(result["name"] or "", safe="")}
    tiles = [(index, base64.b64decode(text)) for index, text in zip(result["target_indices"], result["targets"])]
    if len(tiles) == 1:
        return Response(tiles[0][1], media_type="image/png", headers=headers)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
        for index, data in tiles:
            archive.writestr(f"target_{index}.png", data)
    headers["Content-Disposition"] = f'attachment; filename="{attachment_name(result["name"])}.zip"'
    return Response(buffer.getvalue(), media_type="application/zip", headers=headers)


# serve.ingress copies the FastAPI app and this class when it decorates them: whatever their endpoints call must
# be defined above this line.
@serve.deployment(name="HTTPIngress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=4096)
@serve.ingress(app)
class HTTPIngress:
    """The FastAPI front; one replica, so its counts cover every request the service answered."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.served = self.failed = 0
        self.replica_batches: dict[str, dict] = {}  # pipeline replica -> its latest batch totals
        self.requests_counter = metrics.Counter("imagpose_requests", description="Answered /generate requests.",
                                                tag_keys=("status",))

    @app.post("/generate", openapi_extra={"requestBody": WIRE_REQUEST_BODY},
              summary="Generate the target views of one wire-format request")
    async def generate(self, request: Request, format: str = "json"):
        if format not in FORMATS:
            return self._count(_error_response(422, "InvalidArgumentError",
                                               f"format {format!r} is unknown; choose from {', '.join(FORMATS)}."))
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:  # refused before the body is read
            return self._count(_error_response(413, "RequestTooLargeError", str(RequestTooLargeError(int(declared)))))
        raw = await request.body()
        if len(raw) > MAX_REQUEST_BYTES:  # a chunked body declares no length
            return self._count(_error_response(413, "RequestTooLargeError", str(RequestTooLargeError(len(raw)))))
        try:
            body = parse_json(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return self._count(_error_response(400, "WireFormatError", f"The request body is not JSON ({exc}); send "
                                               "a wire-format request (imagpose.serving.wire.request_to_json)."))
        outcome = await self.pipeline.generate.remote(body)
        totals = outcome["batches"]
        known = self.replica_batches.get(totals["replica"])
        if known is None or known["count"] < totals["count"]:
            self.replica_batches[totals["replica"]] = totals
        if outcome["status"] != 200:
            return self._count(_error_response(outcome["status"], outcome["error"], outcome["message"]))
        result = outcome["result"]
        return self._count(_png_response(result) if format == "png" else JSONResponse(result))

    def _count(self, response: Response) -> Response:
        if response.status_code == 200:
            self.served += 1
        else:
            self.failed += 1
        self.requests_counter.inc(tags={"status": str(response.status_code)})
        return response

    @app.get("/healthz", summary="Liveness: the HTTP front answers")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: a pipeline replica has its model loaded")
    async def readyz(self):
        try:
            info = await asyncio.wait_for(self.pipeline.info.remote(), timeout=10)
        except Exception as exc:  # noqa: BLE001 - not ready, whatever the reason; the reason is in the answer
            return JSONResponse({"ready": False, "reason": f"{type(exc).__name__}: {exc}"}, status_code=503)
        return {"ready": True, **info}

    @app.get("/stats", summary="Batch sizes formed so far ({size: count}), requests served and failed")
    async def stats(self) -> dict:
        sizes: dict[int, int] = {}
        for totals in self.replica_batches.values():
            for size, count in totals["batch_sizes"].items():
                sizes[size] = sizes.get(size, 0) + count
        return {"batch_sizes": {str(size): sizes[size] for size in sorted(sizes)}, "served": self.served,
                "failed": self.failed, "replicas_seen": len(self.replica_batches)}


# ---------------------------------------------------------------------------------------------------- start, stop
def build_app(config: ServiceConfig, replicas: int = 1, autoscale: tuple[int, int] | None = None,
              num_cpus: float = 0.25):
    """The Serve application (not started): the ingress bound to the pipeline deployment."""
    config.check()
    check_num_cpus(num_cpus)
    # Room for one batch running and the next one forming on each replica (Serve's default allows 5 in flight).
    options = {"ray_actor_options": {"num_cpus": num_cpus}, "max_ongoing_requests": 2 * config.max_batch}
    if autoscale is not None:
        low, high = autoscale
        options["autoscaling_config"] = {"min_replicas": low, "initial_replicas": max(low, 1), "max_replicas": high,
                                         "target_ongoing_requests": config.max_batch}
    else:
        options["num_replicas"] = check_positive_int("replicas", replicas)
    return HTTPIngress.bind(PipelineReplica.options(**options).bind(config))


class RayService:
    """A running service: ``url``, ``handle`` (the ingress DeploymentHandle), ``model``, ``start_seconds``;
    ``shutdown()`` (also on leaving a ``with`` block)."""

    def __init__(self, url: str, handle, model: str, started_ray: bool, start_seconds: float):
        self.url, self.handle, self.model = url, handle, model
        self.started_ray, self.start_seconds = started_ray, start_seconds
        self.stop_seconds: float | None = None

    def shutdown(self) -> None:
        """Stop the application; a Ray started here stops with it (every process it started ends), a cluster that
        was joined keeps running."""
        if self.stop_seconds is not None:
            return
        started = time.perf_counter()
        _stop(self.started_ray)
        self.stop_seconds = time.perf_counter() - started

    def __enter__(self) -> "RayService":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


_started_ray = False  # whether this process started the Ray it is connected to


def serve_pipeline(model_dir: str | os.PathLike | None = None, *, preset: str | None = None, weights_seed: int = 0,
                   runtime: str = "torch", work_dir: str | os.PathLike | None = None, replicas: int = 1,
                   autoscale: tuple[int, int] | str | None = None, num_cpus: float = 0.25, max_batch: int = 8,
                   batch_wait: float = 0.05, address: str | None = None, host: str = "127.0.0.1",
                   port: int = 8000) -> RayService:
    """Start the service and return once every pipeline replica has loaded its model (see the module docstring).

    Args:
        model_dir: a pipeline folder; None with ``preset`` None: the shipped trained model.
        preset: an architecture preset with random weights (``weights_seed``), used when ``model_dir`` is None.
        runtime: "torch" or "onnxruntime" (exported into ``work_dir`` first, reused while the weights match).
        replicas: pipeline replicas, unless ``autoscale`` = (min, max) or "min:max" lets Serve choose.
        num_cpus: CPUs Ray reserves per pipeline replica (fractions allowed).
        max_batch, batch_wait: ``@serve.batch`` size and wait (seconds after the first request of a batch).
        address: a Ray cluster to join ("auto", "ray://HEAD:10001"); None starts Ray on this machine.
        host, port: where Serve's HTTP proxy listens.
    """
    global _started_ray
    if isinstance(autoscale, str):
        autoscale = parse_autoscale(autoscale)
    config = ServiceConfig(None if model_dir is None else str(Path(model_dir).absolute()), preset, weights_seed,
                           runtime, None if work_dir is None else str(Path(work_dir).absolute()), max_batch,
                           batch_wait)
    application = build_app(config, replicas, autoscale, num_cpus)
    if not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidArgumentError(f"port must be an integer in 1..65535, got {port!r}.")
    if address is None:
        check_port_free(host, port)
    elif address.startswith("ray://"):
        check_cluster_reachable(address)
    started = time.perf_counter()
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no auth token written into the home folder
        if address is None:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, namespace=APP_NAME)
            _started_ray = True
        else:
            ray.init(address=address, namespace=APP_NAME)
    try:
        serve.start(http_options={"host": host, "port": port})
        handle = serve.run(application, name=APP_NAME, route_prefix="/")
    except BaseException:
        _stop(_started_ray)
        raise
    url = f"http://{_reachable_host(host, address)}:{port}"
    return RayService(url, handle, config.model_name, _started_ray, time.perf_counter() - started)


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another server listens on, before anything starts (Serve's proxy would share it with
    SO_REUSEPORT, and requests would reach either server). SO_REUSEADDR lets a port in TIME_WAIT pass."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise InvalidArgumentError(f"Cannot listen on {host}:{port}: {exc.strerror or exc} (another server may "
                                       "be using it); stop it or choose another --port.") from exc


def check_cluster_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse a ``ray://HOST:PORT`` address nothing answers on within ``timeout`` seconds (Ray itself retries
    for about half a minute and then raises a connection traceback)."""
    where = address[len("ray://"):]
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise InvalidArgumentError(f"--address {address!r} must look like ray://HOST:PORT (e.g. ray://head:10001).")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise InvalidArgumentError(f"Nothing answers at {address} ({exc.strerror or exc}); start the cluster's Ray "
                                   "client server there (`ray start --head`) or check --address.") from exc


def _reachable_host(host: str, address: str | None) -> str:
    """A host name clients can use: the head of a ``ray://`` cluster, this machine for a wildcard bind."""
    if address and address.startswith("ray://"):
        return address[len("ray://"):].rsplit(":", 1)[0]
    if host in ("0.0.0.0", "::"):
        return socket.gethostname() if address else "127.0.0.1"
    return host


def _stop(stop_ray: bool) -> None:
    global _started_ray
    import ray

    if not ray.is_initialized():
        return
    if stop_ray:
        serve.shutdown()
        ray.shutdown()
        _started_ray = False
    else:  # a joined cluster: remove our application only, leave its Serve instance and Ray running
        serve.delete(APP_NAME)
        ray.shutdown()


def shutdown() -> None:
    """Stop the service this process started (no-op when none runs)."""
    _stop(_started_ray)
