"""Load-test both servers on this machine, one after the other, with the same requests (docs/serving.md, "Measured").

    python scripts/serving_loadtest.py --out docs/benchmarks/serving            # both, 8 clients, 64 requests
    python scripts/serving_loadtest.py --out OUT --only ray --clients 4 --requests 16 --steps 4

Ray Serve: ``imagpose serve`` (the shipped model, one replica) in a child process,
``imagpose loadtest --server-kind ray``, Ctrl-C. Triton: ``imagpose export triton --runtime python`` (the shipped model
at its training tile size), a real ``tritonserver`` from the server environment (``make .venv-triton``) through
:class:`imagpose.serving.triton.server.TritonServer`, ``imagpose loadtest --server-kind triton``. Each writes
``OUT/<server>/results.json`` and ``loadtest.png``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

IMAGPOSE = [sys.executable, "-m", "imagpose.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def loadtest(url: str, kind: str, out: Path, args) -> None:
    subprocess.run([*IMAGPOSE, "loadtest", "--server", url, "--server-kind", kind, "--clients", str(args.clients),
                    "--requests", str(args.requests), "--steps", str(args.steps), "--out", str(out / kind)],
                   check=True)


def ray(out: Path, args) -> None:
    port = free_port()
    server = subprocess.Popen([*IMAGPOSE, "serve", "--port", str(port)], start_new_session=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler))
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).ok:
                    break
            except requests.RequestException:  # not listening yet, or busy starting
                pass
            time.sleep(1)
        else:
            raise SystemExit("the Ray Serve service did not become ready within 180 s")
        loadtest(f"http://127.0.0.1:{port}", "ray", out, args)
    finally:
        os.killpg(server.pid, signal.SIGINT)
        server.wait(timeout=60)


def triton(out: Path, args) -> None:
    from imagpose.pretrained import shipped_model_dir, trained_tile_size
    from imagpose.serving.triton.server import TritonServer

    model = shipped_model_dir()
    height, width = trained_tile_size(model)
    with tempfile.TemporaryDirectory() as scratch:
        repo = Path(scratch) / "repo"
        subprocess.run([*IMAGPOSE, "export", "triton", "--model", str(model), "--runtime", "python", "--tile-size",
                        f"{height}x{width}", "--max-batch", "8", "--queue-delay-ms", "50", "--out", str(repo)],
                       check=True)
        with TritonServer(repo) as server:
            loadtest(server.http_url, "triton", out, args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for <server>/results.json and loadtest.png")
    parser.add_argument("--only", choices=["ray", "triton"], default=None, help="one server only")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    out = Path(args.out)
    for name, run in (("ray", ray), ("triton", triton)):
        if args.only in (None, name):
            run(out, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
