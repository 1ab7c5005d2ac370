"""A server that answers wrongly: tile indices it chose never become file names, a mismatched answer is refused
before anything is written, and a huge error message is clipped."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image

from imagpose.cli import main
from imagpose.errors import InvalidArgumentError
from imagpose.pipeline import GenerationResult
from imagpose.serving.client import MAX_SERVER_MESSAGE_CHARS
from imagpose.serving.connect import connect
from imagpose.serving.wire import result_to_json


def answer_with(target_indices):
    tile = Image.new("RGB", (64, 64), (10, 200, 10))
    result = GenerationResult(targets=[tile], target_indices=[1], canvas=Image.new("RGB", (128, 128)),
                              latents=torch.zeros(1, 4, 16, 16), seed=0, name=None)
    return 200, {**result_to_json(result), "target_indices": target_indices}


@pytest.fixture
def hostile_server():
    """http://127.0.0.1:PORT of a server whose POST /generate answers ``server.answer`` = (status, JSON)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["Content-Length"]))
            status, body = httpd.answer
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("indices, words", [(["../../outside"], "target_indices must be one tile index per target"),
                                            ([7], "answered tiles [7] (1 images) for a request whose targets are "
                                                  "tiles [3]")])
def test_generate_refuses_an_answer_for_other_tiles_and_writes_nothing(hostile_server, samples, tmp_path, capsys,
                                                                       indices, words):
    hostile_server.answer = answer_with(indices)
    image, pose = samples("person_blue_front")
    _, target = samples("person_blue_walking")
    out = tmp_path / "out"
    code = main(["generate", "--source", str(image), str(pose), "--target", str(target), "--tile-size", "64x64",
                 "--steps", "1", "--no-progress", "--server", f"http://127.0.0.1:{hostile_server.server_port}",
                 "--server-kind", "ray", "--out", str(out)])
    assert code != 0 and words in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # not even the output folder


def test_a_huge_server_error_message_is_clipped(hostile_server):
    hostile_server.answer = 422, {"error": "WireFormatError", "message": "x" * 5_000_000}
    with connect(f"http://127.0.0.1:{hostile_server.server_port}", kind="ray") as client:
        with pytest.raises(InvalidArgumentError) as error:
            client.post_generate({})
    assert len(str(error.value)) < MAX_SERVER_MESSAGE_CHARS + 200 and "4998000 more characters" in str(error.value)


def test_a_triton_client_pointed_at_another_service_says_which_kind_to_use(hostile_server):
    pytest.importorskip("tritonclient.http")
    from imagpose import scenarios

    hostile_server.answer = 404, {"detail": "Not Found"}  # what the Ray service (FastAPI) answers on Triton's path
    person, pose = Image.new("RGB", (64, 64), (200, 60, 60)), Image.new("RGB", (64, 64))
    with connect(f"http://127.0.0.1:{hostile_server.server_port}", kind="triton", timeout=30) as client:
        with pytest.raises(InvalidArgumentError, match="has no Triton model 'imagpose'.*--server-kind ray"):
            client.generate([scenarios.t2(person, pose, pose, tile_size=(64, 64), seed=0)])
