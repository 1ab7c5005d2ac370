"""Load measurement of a served pipeline: N concurrent clients send M requests, through the client of either
server (:func:`imagpose.serving.connect.connect`, Triton or Ray Serve).

    requests = sample_requests(64, tile_size=(128, 96))
    report = run_load("http://127.0.0.1:8000", "ray", requests, SamplingConfig(num_inference_steps=20), clients=8)
    with OutputFolder("outputs/loadtest") as out:     # results.json + loadtest.png, atomically
        write_report(report, out)

Each client is a thread with its own connection that sends one request at a time and sends the next as soon as
its answer arrives (a closed loop), taking requests from one shared list, so M requests are in flight N at a time.
Latency is the time from sending a request to having its decoded result. Every answer is checked against its
request (seed and name), so a swapped answer counts as an error. The batch sizes are the server's own count
(``client.batch_sizes()``) after the run minus before it, so they cover this run only if nothing else was sent
meanwhile. One untimed warm-up request per client runs first (lazy initialisation, connections).

Triton's ``perf_analyzer`` does not run here: the ``perf-analyzer`` package on PyPI is an empty placeholder and the
``tritonclient`` wheels carry no binary; it ships in NVIDIA's ``tritonserver:<version>-py3-sdk`` container, where
it can drive the Triton server directly (not the Ray service). This module measures both servers the same way.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from imagpose.canvas import PoseRequest
from imagpose.errors import InvalidArgumentError
from imagpose.sampling_config import SamplingConfig

from .connect import connect

PERCENTILES = (50, 95, 99)


# ---------------------------------------------------------------------------------------------------- requests
def sample_requests(count: int, tile_size: tuple[int, int], seed: int = 0) -> list[PoseRequest]:
    """``count`` t2 requests on the shipped samples: each person's front view posed as another of their views,
    cycling through every (person, target pose) pair; seeds ``seed``, ``seed + 1``, ... so every request differs."""
    from imagpose import scenarios
    from imagpose.pose import keypoints_from_json
    from imagpose.samples import sample, sample_names

    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidArgumentError(f"The load needs at least one request, got {count!r}.")
    names = sample_names()
    pairs = [(person, target) for person in names if person.endswith("_front")
             for target in names if target != person and target.startswith(person[:-len("front")])]
    if not pairs:  # every shipped person has a front view; other sample sets pose every sample as the next one
        pairs = [(name, names[(i + 1) % len(names)]) for i, name in enumerate(names)]
    requests = []
    for index in range(count):
        person, target = pairs[index % len(pairs)]
        image, pose = sample(person)
        target_pose = keypoints_from_json(sample(target)[1])
        requests.append(scenarios.t2(image, pose, target_pose, tile_size=tile_size, seed=seed + index,
                                     name=f"load-{index}-{person}-as-{target}"))
    return requests


# ---------------------------------------------------------------------------------------------------- the run
@dataclass
class LoadReport:
    """What one load run measured (seconds; ``latencies`` of the successful requests, in completion order)."""

    server: str
    kind: str
    clients: int
    requests: int
    settings: dict
    tile_size: list[int]
    wall_seconds: float
    latencies: list[float]
    errors: list[str]
    batch_sizes: dict[int, int]
    batch_sizes_before: dict[int, int] = field(default_factory=dict)

    @property
    def succeeded(self) -> int:
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        """Successful requests per second of wall-clock time."""
        return self.succeeded / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def percentiles(self) -> dict[str, float | None]:
        if not self.latencies:
            return {f"p{p}": None for p in PERCENTILES}
        values = np.percentile(np.asarray(self.latencies), PERCENTILES)
        return {f"p{p}": float(v) for p, v in zip(PERCENTILES, values)}

    @property
    def mean_batch(self) -> float:
        batches = sum(self.batch_sizes.values())
        return sum(size * count for size, count in self.batch_sizes.items()) / batches if batches else 0.0

    def as_dict(self) -> dict:
        data = asdict(self)
        data["batch_sizes"] = {str(k): v for k, v in sorted(self.batch_sizes.items())}
        data["batch_sizes_before"] = {str(k): v for k, v in sorted(self.batch_sizes_before.items())}
        return {**data, "succeeded": self.succeeded, "failed": len(self.errors),
                "throughput_requests_per_s": self.throughput, "latency_seconds": self.percentiles(),
                "mean_batch": self.mean_batch}


def run_load(url: str, kind: str, requests: list[PoseRequest], sampling: SamplingConfig, clients: int,
             warmup: bool = True, **client_options) -> LoadReport:
    """Send ``requests`` to the server at ``url`` from ``clients`` concurrent clients (see the module docstring)."""
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
        raise InvalidArgumentError(f"clients must be an integer >= 1, got {clients!r}.")
    latencies, errors, failures, lock = [], [], [], threading.Lock()
    queue = iter(range(len(requests)))
    connected = threading.Barrier(clients + 1)  # every client connected (and warmed up), and this thread
    go, cancelled = threading.Event(), threading.Event()

    def send_all(client) -> None:
        while not cancelled.is_set():
            with lock:
                index = next(queue, None)
            if index is None:
                return
            request = requests[index]
            started = time.perf_counter()
            try:
                result = client.generate([request], sampling)[0]
                problem = _mismatch(request, result)
            except Exception as exc:  # noqa: BLE001 - a failed request is a measurement, kept with its reason
                problem = f"{type(exc).__name__}: {exc}"
            finished = time.perf_counter()
            with lock:
                if problem is None:
                    latencies.append(finished - started)
                else:
                    errors.append(f"{request.name}: {problem}")

    def client_thread() -> None:
        try:
            # Made, used and closed on this thread: some clients are bound to the thread that made them
            # (tritonclient's HTTP client runs on gevent).
            with connect(url, kind, **client_options) as client:
                if warmup:
                    client.generate([requests[0]], sampling)
                connected.wait()
                go.wait()
                send_all(client)
        except threading.BrokenBarrierError:
            return
        except BaseException as exc:  # noqa: BLE001 - raised by the calling thread
            failures.append(exc)
            connected.abort()

    with connect(url, kind, **client_options) as control:  # this thread's: readiness and the server's batch counts
        if not control.ready():
            raise InvalidArgumentError(f"The {kind} server at {url} is not ready (its readiness check failed); start "
                                       "it, or wait until its model has loaded.")
        threads = [threading.Thread(target=client_thread, name=f"imagpose-load-{i}") for i in range(clients)]
        for thread in threads:
            thread.start()
        try:
            connected.wait()
            before = control.batch_sizes()
            started = time.perf_counter()
            go.set()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - started
            after = control.batch_sizes()
        except threading.BrokenBarrierError:
            for thread in threads:
                thread.join()
            raise failures[0] from None
        finally:
            cancelled.set()  # on an error here (Ctrl-C included) the clients stop after their current request
            go.set()
    if failures:
        raise failures[0]
    formed = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    return LoadReport(url, kind, clients, len(requests), sampling.to_dict(), list(requests[0].tile_size or ()), wall,
                      latencies, errors, {size: n for size, n in formed.items() if n > 0}, before)


def _mismatch(request: PoseRequest, result) -> str | None:
    if result.seed != request.seed or result.name != request.name:
        return (f"answered with seed {result.seed} and name {result.name!r}, not its own ({request.seed}, "
                f"{request.name!r})")
    return None


# ---------------------------------------------------------------------------------------------------- output
def format_table(report: LoadReport) -> str:
    p = report.percentiles()
    ms = {k: "-" if v is None else f"{1000 * v:.0f}" for k, v in p.items()}
    sizes = ", ".join(f"{size}x{count}" for size, count in sorted(report.batch_sizes.items())) or "-"
    rows = [("server", f"{report.kind} {report.server}"), ("clients", str(report.clients)),
            ("requests", f"{report.requests} ({report.succeeded} ok, {len(report.errors)} failed)"),
            ("settings", f"{report.settings['num_inference_steps']} steps, guidance "
                         f"{report.settings['guidance_scale']:g}, {report.settings['sampler']}, tiles "
                         f"{'x'.join(map(str, report.tile_size))}"),
            ("wall", f"{report.wall_seconds:.2f} s"), ("throughput", f"{report.throughput:.2f} requests/s"),
            ("latency", f"p50 {ms['p50']} ms, p95 {ms['p95']} ms, p99 {ms['p99']} ms"),
            ("batch sizes", f"{sizes} (size x batches; mean {report.mean_batch:.2f})")]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines += [f"error: {error}" for error in report.errors[:5]]
    if len(report.errors) > 5:
        lines.append(f"... and {len(report.errors) - 5} more errors (results.json lists them all)")
    return "\n".join(lines)


def plot_report(report: LoadReport, path) -> None:
    """Latency histogram with its CDF, and the batch sizes the server formed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    latencies = np.sort(np.asarray(report.latencies)) * 1000
    if latencies.size:
        left.hist(latencies, bins=min(30, max(5, latencies.size // 4)), color="tab:blue", alpha=0.6)
        cdf = left.twinx()
        cdf.plot(latencies, np.arange(1, latencies.size + 1) / latencies.size, color="tab:red")
        cdf.set_ylabel("fraction of requests (CDF)")
        cdf.set_ylim(0, 1.02)
        for name, value in report.percentiles().items():
            left.axvline(1000 * value, color="gray", linestyle=":", linewidth=1)
            left.text(1000 * value, left.get_ylim()[1] * 0.95, name, rotation=90, va="top", fontsize=8)
    left.set_xlabel("latency (ms)")
    left.set_ylabel("requests")
    left.set_title(f"{report.succeeded} requests, {report.clients} clients: {report.throughput:.2f} req/s")
    sizes = sorted(report.batch_sizes)
    right.bar([str(s) for s in sizes], [report.batch_sizes[s] for s in sizes], color="tab:green")
    right.set_xlabel("batch size")
    right.set_ylabel("batches formed by the server")
    right.set_title(f"{report.kind}: mean batch {report.mean_batch:.2f}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(report: LoadReport, folder) -> None:
    """``results.json`` and ``loadtest.png`` into an entered :class:`~imagpose.io.OutputFolder` (moved into place,
    beside what is there, when its block ends)."""
    folder.write_json("results.json", report.as_dict())
    plot_report(report, folder.path("loadtest.png"))
