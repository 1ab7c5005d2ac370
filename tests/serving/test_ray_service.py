"""The Ray Serve service answers real HTTP requests with the in-process pipeline's images, batches concurrent
requests without swapping answers, answers a bad request with a 4xx naming the problem and goes on serving,
survives clients that hang up, and `imagpose serve` stops on Ctrl-C leaving no Ray process behind. One service
for the whole folder (ray_fixture.py): `imagpose serve` in a child process."""

import base64
import io
import socket
import threading
import time
import zipfile

import numpy as np
import psutil
import pytest
import requests
from PIL import Image

from imagpose.errors import InvalidArgumentError
from imagpose.sampling_config import DeepCacheConfig
from imagpose.serving.connect import connect
from imagpose.serving.ray_client import RayServeClient
from imagpose.serving.wire import WireFormatError, request_to_json

from .hostile_bodies import DEEP_JSON, png_that_pil_reads_as_a_syntax_error
from .ray_fixture import MAX_BATCH, SETTINGS, free_port, shared_service, t2_request

PEOPLE = ("person_red", "person_blue")
TARGETS = ("walking", "arms_up", "side", "hands_on_hips")


@pytest.fixture(scope="module")
def ray_service(request):
    return shared_service(request.config)


@pytest.fixture(scope="module")
def shipped_pipe():
    from imagpose.pipeline import IMAGPosePipeline
    from imagpose.pretrained import shipped_model_dir

    return IMAGPosePipeline.from_pretrained(shipped_model_dir())


def in_process(pipe, requests_):
    return pipe(requests_, progress=False, sampling=SETTINGS).results


def assert_same_images(served, local):
    assert served.seed == local.seed and served.name == local.name and served.target_indices == local.target_indices
    for ours, theirs in zip(served.targets, local.targets):
        difference = np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(theirs, dtype=np.int16))
        assert difference.max() <= 1, f"{served.name}: tiles differ by up to {difference.max()} levels"


def test_served_images_equal_the_in_process_pipeline(ray_service, shipped_pipe):
    request = t2_request(5)
    with connect(ray_service.url, kind="ray") as client:
        assert client.ready()
        served = client.generate(request, SETTINGS)[0]
    assert_same_images(served, in_process(shipped_pipe, request)[0])


def test_a_served_request_carries_deepcache_and_eta(ray_service, shipped_pipe):
    sampling = SETTINGS.replace(num_inference_steps=3, eta=0.5, deepcache=DeepCacheConfig(2, 1))
    request = t2_request(6)
    with connect(ray_service.url, kind="ray") as client:
        served = client.generate(request, sampling)[0]
    local = shipped_pipe(request, sampling=sampling, progress=False).results[0]
    assert_same_images(served, local)
    plain = shipped_pipe(request, sampling=SETTINGS.replace(num_inference_steps=3), progress=False).results[0]
    assert not np.array_equal(np.asarray(served.targets[0]), np.asarray(plain.targets[0]))


def test_png_format_one_target_and_a_zip_of_several(ray_service):
    from imagpose import scenarios
    from imagpose.samples import sample

    one = request_to_json(t2_request(7), SETTINGS)
    json_answer = requests.post(f"{ray_service.url}/generate", json=one, timeout=60).json()
    png = requests.post(f"{ray_service.url}/generate?format=png", json=one, timeout=60)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["x-imagpose-seed"] == "7"
    assert png.content == base64.b64decode(json_answer["targets"][0])

    image, pose = sample("person_blue_front")
    star = scenarios.imagpose_star(image, pose, [sample("person_blue_side")[1], sample("person_blue_arms_up")[1]],
                                   tile_size=(64, 64), seed=1, name="star")
    answer = requests.post(f"{ray_service.url}/generate?format=png", json=request_to_json(star, SETTINGS), timeout=60)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        assert archive.namelist() == ["target_1.png", "target_2.png"]
        assert Image.open(archive.open("target_1.png")).size == (64, 64)


def test_64_requests_from_8_clients_are_batched_and_none_is_swapped(ray_service, shipped_pipe):
    requests_ = [t2_request(100 + i, PEOPLE[i % 2], TARGETS[(i // 2) % 4]) for i in range(64)]
    answers: dict[int, object] = {}
    failures = []

    def one_client(first):
        try:
            with RayServeClient(ray_service.url) as client:
                for index in range(first, 64, 8):  # one request at a time: 8 in flight, one per client
                    answers[index] = client.generate([requests_[index]], SETTINGS)[0]
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    with RayServeClient(ray_service.url) as control:
        before, served_before = control.batch_sizes(), control.stats()["served"]
        threads = [threading.Thread(target=one_client, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        after, served_after = control.batch_sizes(), control.stats()["served"]
    assert not failures, failures
    assert sorted(answers) == list(range(64)) and served_after - served_before == 64
    for index, result in answers.items():
        assert (result.seed, result.name) == (requests_[index].seed, requests_[index].name)
    checked = [0, 9, 18, 27, 36, 45, 54, 63]  # one request of each client, every person and target among them
    for index, local in zip(checked, in_process(shipped_pipe, [requests_[i] for i in checked])):
        assert_same_images(answers[index], local)
    formed = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert sum(size * count for size, count in formed.items()) == 64, formed
    assert max(size for size, count in formed.items() if count) > 1, f"no batch larger than 1: {formed}"
    assert max(formed) <= MAX_BATCH


def test_a_bad_request_is_a_4xx_naming_the_problem_and_the_next_is_answered(ray_service):
    url = f"{ray_service.url}/generate"
    bad = request_to_json(t2_request(1), SETTINGS)
    bad["grid"] = [2]
    answer = requests.post(url, json=bad, timeout=60)
    assert answer.status_code == 422
    assert answer.json()["error"] == "WireFormatError" and "grid must be two positive integers" in answer.json()[
        "message"]
    not_json = requests.post(url, data=b"{nope", timeout=60)
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["message"]
    assert requests.post(f"{url}?format=gif", json=bad, timeout=60).status_code == 422
    deep = requests.post(url, data=DEEP_JSON.encode(), timeout=60)
    assert deep.status_code == 400 and "nested too deeply" in deep.json()["message"]
    corrupt, huge_seed = request_to_json(t2_request(1), SETTINGS), request_to_json(t2_request(1), SETTINGS)
    corrupt["views"][0]["image"] = png_that_pil_reads_as_a_syntax_error()
    huge_seed["seed"] = 2**80
    for body, words in ((corrupt, "is not a readable image (broken PNG file"), (huge_seed, "seed must be an integer")):
        answer = requests.post(url, json=body, timeout=60)
        assert answer.status_code == 422 and words in answer.json()["message"], answer.text
    with RayServeClient(ray_service.url) as client:
        with pytest.raises(InvalidArgumentError, match="grid must be two positive integers"):
            client.post_generate(bad)
        assert client.generate(t2_request(2), SETTINGS)[0].seed == 2


def test_a_body_over_the_size_limit_is_a_413_before_it_is_read(ray_service):
    host, port = ray_service.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:  # declares 1 GB, sends nothing
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000000000\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):  # headers and the JSON body
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        answer = answer.decode("latin-1")
    assert answer.startswith("HTTP/1.1 413") and "over the 64 MiB a request can be" in answer, answer[:300]


def test_a_request_that_fails_inside_a_batch_fails_alone(ray_service):
    good = [request_to_json(t2_request(seed), SETTINGS) for seed in (11, 12, 13)]
    unreadable = request_to_json(t2_request(14), SETTINGS)
    unreadable["views"][0]["image"] = base64.b64encode(b"not a png").decode()
    bodies = [good[0], unreadable, good[1], good[2]]
    with RayServeClient(ray_service.url) as client:
        before = client.batch_sizes()
        results = [None] * 4
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, _try(client.post_generate, bodies[i])))
                   for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        after = client.batch_sizes()
    assert isinstance(results[1], InvalidArgumentError) and "views[0].image is not a readable image" in str(results[1])
    assert [results[i]["seed"] for i in (0, 2, 3)] == [11, 12, 13]
    formed = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert formed.get(4) == 1 or sum(formed.values()) > 1, formed  # usually one batch of 4, the bad one included


def _try(function, *args):
    try:
        return function(*args)
    except Exception as exc:  # noqa: BLE001 - the test looks at it
        return exc


def test_clients_that_hang_up_do_not_wedge_the_service(ray_service):
    body = request_to_json(t2_request(21), SETTINGS)
    for _ in range(4):
        with pytest.raises(requests.Timeout):
            requests.post(f"{ray_service.url}/generate", json=body, timeout=(5, 0.01))
    started = time.perf_counter()
    answer = requests.post(f"{ray_service.url}/generate", json=body, timeout=60)
    assert answer.status_code == 200 and answer.json()["seed"] == 21
    assert time.perf_counter() - started < 30
    assert requests.get(f"{ray_service.url}/healthz", timeout=10).status_code == 200


def test_health_ready_stats_and_docs_answer(ray_service):
    assert requests.get(f"{ray_service.url}/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(f"{ray_service.url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["model"] == "tiny-people"
    docs = requests.get(f"{ray_service.url}/docs", timeout=10)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = requests.get(f"{ray_service.url}/openapi.json", timeout=10).json()
    assert {"/generate", "/healthz", "/readyz", "/stats"} <= set(schema["paths"])
    stats = requests.get(f"{ray_service.url}/stats", timeout=10).json()
    assert {"batch_sizes", "served", "failed"} <= set(stats) and all(key.isdigit() for key in stats["batch_sizes"])


@pytest.mark.parametrize("kwargs, words", [
    ({"runtime": "tensorrt"}, "runtime 'tensorrt' is unknown"),
    ({"autoscale": "3:1"}, "autoscale must be MIN:MAX"),
    ({"num_cpus": 0}, "num_cpus must be a positive number"),
    ({"max_batch": 0}, "max_batch must be an integer >= 1"),
    ({"model_dir": "/nonexistent"}, "is not a pipeline folder"),
])
def test_bad_settings_are_refused_before_ray_starts(kwargs, words):
    from imagpose.serving.ray_service import serve_pipeline

    with pytest.raises(InvalidArgumentError, match=None) as info:
        serve_pipeline(**kwargs)
    assert words in str(info.value)


def test_a_busy_port_and_an_unreachable_cluster_are_refused_before_ray_starts():
    import socket
    import time

    from imagpose.serving.ray_service import serve_pipeline

    with socket.socket() as listener:  # another server on the port
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(InvalidArgumentError, match=f"Cannot listen on 127.0.0.1:{port}.*choose another --port"):
            serve_pipeline(preset="tiny", port=port)
    started = time.perf_counter()
    with pytest.raises(InvalidArgumentError, match=r"Nothing answers at ray://127.0.0.1:\d+"):
        serve_pipeline(preset="tiny", address=f"ray://127.0.0.1:{free_port()}")
    assert time.perf_counter() - started < 10
    with pytest.raises(InvalidArgumentError, match="must look like ray://HOST:PORT"):
        serve_pipeline(preset="tiny", address="ray://nowhere")


def test_the_client_names_an_unreachable_server():
    from imagpose.serving.ray_client import ServerUnreachableError

    with RayServeClient(f"http://127.0.0.1:{free_port()}", timeout=5) as client:
        assert client.ready() is False
        with pytest.raises(ServerUnreachableError, match="check the URL"):
            client.batch_sizes()
    with pytest.raises(InvalidArgumentError, match="http:// or https:// URL"):
        RayServeClient("localhost:8000")
    assert issubclass(WireFormatError, InvalidArgumentError)


def test_ctrl_c_stops_imagpose_serve_and_every_ray_process_it_started(ray_service):
    """Last in this file: it stops the shared service (a later test would start another)."""
    processes = ray_service.processes
    names = [" ".join(_cmdline(p)) for p in processes]
    assert any("raylet" in name for name in names) and any("gcs_server" in name for name in names), names
    assert sum("ServeReplica" in name or "ray::" in name for name in names) >= 2, names
    stopping = time.perf_counter()
    assert ray_service.ctrl_c() == 0, ray_service.output()[-6000:]
    gone, alive = psutil.wait_procs(processes, timeout=30)
    stop_seconds = time.perf_counter() - stopping
    assert not alive, [(p.pid, _cmdline(p)) for p in alive]
    output = ray_service.output()
    assert "tiny-people on http://127.0.0.1:" in output and "stopped in" in output, output[-6000:]
    print(f"imagpose serve: ready after {ray_service.ready_seconds:.1f} s; Ctrl-C: exited and all {len(processes)} "
          f"of its processes gone after {stop_seconds:.1f} s")


def _cmdline(process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


@pytest.mark.parametrize("name,expected", [
    ("star", "star"), (None, "targets"), ("", "targets"), ("../../etc/passwd", "_.._etc_passwd"),
    ('a.zip"; filename="b', "a.zip___filename__b"), ("x\r\nSet-Cookie: 1", "x__Set-Cookie__1"),
    ("visage é", "visage__"), ("n" * 10**6, "n" * 64), ("///", "targets"),
])
def test_the_zip_attachment_name_is_a_safe_file_name_whatever_the_request_name(name, expected):
    from imagpose.serving.ray_service import attachment_name

    assert attachment_name(name) == expected
