"""One Ray Serve service for every Ray test of this folder (starting Ray and Serve takes 10-30 s):
``imagpose serve`` in a child process (the shipped trained model), as a user starts it; every request uses 64x64
tiles and 2 steps. The last test of test_ray_service.py stops it with Ctrl-C; otherwise the session's end does."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import psutil
import pytest

from imagpose import scenarios
from imagpose.pose import keypoints_from_json
from imagpose.samples import sample
from imagpose.sampling_config import SamplingConfig

TILE = (64, 64)
SETTINGS = SamplingConfig(num_inference_steps=2)
MAX_BATCH = 8
_service = None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def t2_request(seed: int, person: str = "person_red", target: str = "walking", **kwargs):
    image, pose = sample(f"{person}_front")
    return scenarios.t2(image, pose, keypoints_from_json(sample(f"{person}_{target}")[1]), seed=seed,
                        tile_size=TILE, name=f"{person}-{target}-{seed}", **kwargs)


@dataclass
class ServeProcess:
    """``imagpose serve`` running in its own session (as a terminal's foreground job: Ctrl-C reaches the command
    and every Ray process it started)."""

    url: str
    process: subprocess.Popen
    log: object
    ready_seconds: float
    processes: list = field(default_factory=list)  # the command's descendants once it was ready

    def output(self) -> str:
        """Everything the command printed so far."""
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def ctrl_c(self, timeout: float = 90) -> int:
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            try:
                self.ctrl_c()
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        psutil.wait_procs(self.processes, timeout=30)


def start_serve(*flags: str, timeout: float = 240) -> ServeProcess:
    """Start ``imagpose serve`` and return once it is ready (its child inherits this process's SIGINT
    disposition, ignored under a background job: the command restores Python's handler itself)."""
    import requests

    port = free_port()
    log = tempfile.TemporaryFile("w+")
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "imagpose", "serve", "--port", str(port), *flags],
                               stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               start_new_session=True)
    service = ServeProcess(f"http://127.0.0.1:{port}", process, log, 0.0)
    while True:
        if process.poll() is not None:
            pytest.fail(f"imagpose serve exited with {process.returncode}:\n{service.output()[-6000:]}")
        if time.perf_counter() - started > timeout:
            service.kill()
            pytest.fail(f"imagpose serve was not ready after {timeout} s:\n{service.output()[-6000:]}")
        try:  # ready, and the command has finished starting (it prints the line below once serve.run returns)
            if (requests.get(f"{service.url}/readyz", timeout=5).status_code == 200
                    and "Ctrl-C stops the service." in service.output()):
                break
        except requests.RequestException:
            pass
        time.sleep(0.5)
    service.ready_seconds = time.perf_counter() - started
    service.processes = psutil.Process(process.pid).children(recursive=True)
    return service


def shared_service(config: pytest.Config) -> ServeProcess:
    """The shared service, started on first use (and again if a test stopped it)."""
    global _service
    if _service is None or _service.process.poll() is not None:
        _service = start_serve("--max-batch", str(MAX_BATCH), "--batch-wait", "0.1")
        config.add_cleanup(_service.kill)
    return _service
