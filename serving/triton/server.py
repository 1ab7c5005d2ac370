"""Start and stop a real ``tritonserver`` on a model repository (tests, local serving, benchmarks).

    with TritonServer("repo/") as server:                  # free ports; returns once every model is ready
        with TritonClient(server.http_url) as client:
            client.generate(request)

The binary is the one in the ``nvidia-pytriton`` wheel (Triton with the Python backend only, CPU or GPU), installed
in its own environment because that wheel pins numpy<2: ``make .venv-triton``, or ``IMAGPOSE_TRITON_ENV`` naming
another such environment. The Python models run in that environment's interpreter (its ``bin`` first on PATH), so
it holds imagpose too. Production servers run NVIDIA's server image instead (docs/serving.md).

How the binary is run (the wheel's layout): in place, its libraries found through ``LD_LIBRARY_PATH``
(``nvidia_pytriton.libs``) plus the environment's interpreter LIBDIR, else the backend stub links the system's
libpython and fails; a backend folder of our own holds the Python backend with the stub for this Python version.
``--exit-on-error=false`` keeps a server whose model failed to load up (not ready), so the reason can be read from
the repository index API, which :class:`ServerNotReadyError` quotes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from imagpose.errors import IMAGPoseError, MissingDependencyError

ENV_VARIABLE = "IMAGPOSE_TRITON_ENV"
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the checkout: serving/triton/server.py
DEFAULT_ENV = SOURCE_ROOT / ".venv-triton"


class ServerNotReadyError(IMAGPoseError):
    """The server did not start, or a model did not load; the message holds the reasons the server gave."""


def server_environment() -> Path:
    """The environment holding the ``tritonserver`` binary (``IMAGPOSE_TRITON_ENV``, else ``.venv-triton``)."""
    env = Path(os.environ.get(ENV_VARIABLE) or DEFAULT_ENV)
    if not (env / "bin" / "python").exists() or not list(env.glob("lib/python3*/site-packages/pytriton/tritonserver")):
        raise MissingDependencyError(
            f"No Triton server environment at {env}: create it with `make .venv-triton` (nvidia-pytriton, which "
            f"pins numpy<2, beside imagpose), or set {ENV_VARIABLE} to such an environment.")
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TritonServer:
    """A ``tritonserver`` process serving ``repo``; a context manager that stops it (and its backend stubs).

    Args:
        repo: the model repository.
        http_port, grpc_port, metrics_port: None picks free ports.
        host: the address all three listen on: loopback by default, so only this machine reaches the server;
            "0.0.0.0" for every interface (put it behind your own authentication: the server has none).
        wait_ready: on entering, wait until every model is ready; a model that fails to load raises
            :class:`ServerNotReadyError` with the server's reason (the server is stopped first). False: only until
            the server answers (``model_states()`` then shows the models loading, ready or failed).
        timeout: seconds to wait for readiness.
        log_path: the server's output (default: a temporary file, removed on stop).
        exit_timeout: seconds the server gives in-flight requests when stopping.
    """

    def __init__(self, repo: str | Path, http_port: int | None = None, grpc_port: int | None = None,
                 metrics_port: int | None = None, wait_ready: bool = True, timeout: float = 180.0,
                 log_path: str | Path | None = None, exit_timeout: int = 5, verbose: bool = False,
                 host: str = "127.0.0.1"):
        self.repo = Path(repo).resolve()
        self.host = host
        self.http_port, self.grpc_port = http_port or free_port(), grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.wait_ready, self.timeout, self.exit_timeout, self.verbose = wait_ready, timeout, exit_timeout, verbose
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen | None = None
        self._scratch: Path | None = None
        self._log = None
        self.log_file: Path | None = None

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # a wildcard bind is reached on loopback

    @property
    def http_url(self) -> str:
        return f"http://{self._client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self._client_host}:{self.grpc_port}"

    # ------------------------------------------------------------------ start
    def command(self, env: Path, backends: Path) -> list[str]:
        triton = next(env.glob("lib/python3*/site-packages/pytriton/tritonserver"))
        return [str(triton / "bin" / "tritonserver"), "--model-repository", str(self.repo),
                "--backend-directory", str(backends), "--exit-on-error=false",
                "--exit-timeout-secs", str(self.exit_timeout), "--http-port", str(self.http_port),
                "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port),
                "--http-address", self.host, "--grpc-address", self.host, "--metrics-address", self.host,
                "--log-verbose", "1" if self.verbose else "0"]

    def start(self) -> TritonServer:
        if not self.repo.is_dir():
            raise ServerNotReadyError(f"{self.repo} is not a model repository folder; write one with "
                                      "`imagpose export triton`.")
        env = server_environment()
        site = next(env.glob("lib/python3*/site-packages"))
        triton = site / "pytriton" / "tritonserver"
        python = subprocess.run([str(env / "bin" / "python"), "-c", "import sys, sysconfig; print(sysconfig."
                                 "get_config_var('LIBDIR')); print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
                                capture_output=True, text=True, check=True).stdout.split()
        libdir, version = python
        self._scratch = Path(tempfile.mkdtemp(prefix="imagpose-triton-"))
        backends = self._scratch / "backends"
        shutil.copytree(triton / "backends", backends)
        shutil.copy2(triton / "python_backend_stubs" / version / "triton_python_backend_stub", backends / "python")
        variables = dict(os.environ)
        variables["PATH"] = f"{env / 'bin'}{os.pathsep}{variables.get('PATH', '')}"  # the stub's python: the env's
        variables["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(site / "nvidia_pytriton.libs"), libdir] + ([variables["LD_LIBRARY_PATH"]]
                                                            if variables.get("LD_LIBRARY_PATH") else []))
        variables.pop("PYTHONPATH", None)  # the stub imports the server environment's packages only
        self.log_file = self.log_path or self._scratch / "tritonserver.log"
        self._log = open(self.log_file, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(self.command(env, backends), stdout=self._log, stderr=subprocess.STDOUT,
                                        env=variables, start_new_session=True)
        try:
            self.wait_until_ready() if self.wait_ready else self.wait_until_live()
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ state
    def _get(self, path: str, method: str = "GET", body: bytes | None = None):
        request = urllib.request.Request(self.http_url + path, data=body, method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def live(self) -> bool:
        try:
            return self._get("/v2/health/live")[0] == 200
        except OSError:
            return False

    def ready(self) -> bool:
        try:
            return self._get("/v2/health/ready")[0] == 200
        except OSError:
            return False

    def model_states(self) -> dict[str, tuple[str, str]]:
        """{model: (state, reason)} from the repository index API (state READY, LOADING, UNAVAILABLE, ...)."""
        status, body = self._get("/v2/repository/index", "POST", b"{}")
        return {m["name"]: (m.get("state", ""), m.get("reason", "")) for m in json.loads(body)} if status == 200 else {}

    def wait_until_live(self) -> None:
        """Until the HTTP endpoint answers (models may still be loading)."""
        deadline = time.monotonic() + self.timeout
        while not self.live():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ServerNotReadyError(f"tritonserver did not start (status {self.process.poll()}):\n"
                                          f"{self.log_tail()}")
            time.sleep(0.25)

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerNotReadyError(f"tritonserver exited with status {self.process.returncode} while "
                                          f"starting:\n{self.log_tail()}")
            if self.ready():
                return
            if self.live():
                states = self.model_states()
                failed = {name: reason for name, (state, reason) in states.items() if state == "UNAVAILABLE"}
                loading = [name for name, (state, _) in states.items() if state not in ("READY", "UNAVAILABLE")]
                if failed and not loading:
                    raise ServerNotReadyError("Models of " + str(self.repo) + " failed to load: " + "; ".join(
                        f"{name}: {reason}" for name, reason in sorted(failed.items())))
            time.sleep(0.25)
        raise ServerNotReadyError(f"tritonserver was not ready within {self.timeout:.0f} s; model states "
                                  f"{self.model_states() if self.live() else 'unknown (not live)'}.\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        if self._log is not None:
            self._log.flush()
        if self.log_file is None or not self.log_file.is_file():
            return ""
        return self.log_file.read_bytes()[-chars:].decode(errors="replace")

    def log(self) -> str:
        return self.log_tail(chars=10**9)

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        """SIGTERM (Triton's graceful stop, waiting up to ``exit_timeout`` for in-flight requests); the process group
        (server and backend stubs) is killed if it outlives that by 15 s. Close clients first: an open keep-alive
        connection holds the server until its exit timeout."""
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=self.exit_timeout + 15)
                except subprocess.TimeoutExpired:
                    pass
            with contextlib.suppress(ProcessLookupError, PermissionError):  # stubs left behind, if any
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
