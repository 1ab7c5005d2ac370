"""A server that accepts the connection and never answers: every client gives up after its timeout with one error
that says so and names the flag, and `imagpose generate --server` does the same."""

import socket
import threading
import time

import pytest

from imagpose.cli import main
from imagpose.serving.client import ServerTimeoutError
from imagpose.serving.connect import connect


@pytest.fixture
def silent_server():
    """http://127.0.0.1:PORT of a socket that accepts connections and reads nothing back to them."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []

    def accept():
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:  # closed at teardown
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    for connection in accepted:
        connection.close()


@pytest.mark.parametrize("kind,scheme", [("triton", "http"), ("triton", "grpc"), ("ray", "http")])
def test_a_server_that_never_answers_times_out_with_one_clear_error(silent_server, kind, scheme, capfd):
    if kind == "triton":
        pytest.importorskip("tritonclient.http" if scheme == "http" else "tritonclient.grpc")
    started = time.perf_counter()
    with pytest.raises(ServerTimeoutError, match=r"within 1 s; .*--server-timeout"):
        with connect(f"{scheme}://{silent_server}", kind=kind, timeout=1.0) as client:
            client.generate([_request()])
    assert time.perf_counter() - started < 15
    assert "Traceback" not in capfd.readouterr().err  # no greenlet tracebacks printed beside the error


def test_generate_against_a_silent_server_stops_after_server_timeout(silent_server, samples, capsys):
    image, pose = samples("person_blue_front")
    _, target = samples("person_blue_walking")
    started = time.perf_counter()
    code = main(["generate", "--source", str(image), str(pose), "--target", str(target), "--tile-size", "64x64",
                 "--steps", "1", "--no-progress", "--server", f"http://{silent_server}", "--server-kind", "ray",
                 "--server-timeout", "1"])
    assert code != 0 and time.perf_counter() - started < 60
    assert "No answer from the server" in capsys.readouterr().err


def _request():
    from PIL import Image

    from imagpose import scenarios

    person, pose = Image.new("RGB", (64, 64), (200, 60, 60)), Image.new("RGB", (64, 64))
    return scenarios.t2(person, pose, pose, tile_size=(64, 64), seed=0)
