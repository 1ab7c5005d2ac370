"""A real tritonserver (the nvidia-pytriton binary, Python flavour) serving the tiny pipeline: HTTP and gRPC answers
equal the in-process pipeline's, concurrent clients get their own results in batches, bad requests are 400s, a model
that fails to load is reported with its reason, a dropped client does not wedge the server, and it stops clean; a
served few-step student answers a request without settings with its own defaults."""

import os
import shutil
import socket
import threading
import time

import numpy as np
import psutil
import pytest
import torch

pytest.importorskip("tritonclient.grpc")

from imagpose import scenarios  # noqa: E402
from imagpose.errors import InvalidArgumentError, MissingDependencyError  # noqa: E402
from imagpose.export import ExportOptions, ShapeBucket, export_pipeline  # noqa: E402
from imagpose.export.runtime.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from imagpose.pose import keypoints_from_json  # noqa: E402
from imagpose.samples import sample  # noqa: E402
from imagpose.sampling_config import SamplingConfig  # noqa: E402
from imagpose.serving.triton.client import TritonClient  # noqa: E402
from imagpose.serving.triton.repository import RepositoryOptions, write_repository  # noqa: E402
from imagpose.serving.triton.server import ServerNotReadyError, TritonServer, server_environment  # noqa: E402

SETTINGS = SamplingConfig(num_inference_steps=2)
POSES = ("person_red_walking", "person_red_arms_up", "person_red_side", "person_blue_walking")


@pytest.fixture(scope="module")
def server_env():
    try:
        return server_environment()
    except MissingDependencyError as exc:
        if os.environ.get("IMAGPOSE_REQUIRE_SERVERS") == "1":
            pytest.fail(f"IMAGPOSE_REQUIRE_SERVERS=1 but {exc}")
        pytest.skip(f"no Triton server environment: run `make .venv-triton` ({exc})")


@pytest.fixture(scope="module")
def repository(tiny_pipe, server_env, tmp_path_factory):
    root = tmp_path_factory.mktemp("triton")
    export_pipeline(tiny_pipe, root / "onnx", ExportOptions(bucket=ShapeBucket(1, 64, 64, 2, 2)))
    write_repository(tiny_pipe, root / "repo", RepositoryOptions("python", max_batch_size=8, queue_delay_ms=100),
                     onnx_dir=root / "onnx")
    return root


@pytest.fixture(scope="module")
def server(repository):
    with TritonServer(repository / "repo", log_path=repository / "server.log") as server:
        yield server


def request(seed: int, pose: str = POSES[0]):
    image, source_pose = sample("person_red_front")
    _, target = sample(pose)
    return scenarios.t2(image, source_pose, keypoints_from_json(target), seed=seed, tile_size=(64, 64),
                        name=f"{pose}-{seed}")


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def max_level_difference(a, b) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


@pytest.fixture(scope="module")
def student_pipe(tiny_pipe):
    """A few-step student as ``imagpose train distill`` saves one (weights aside): the LCM scheduler and its own
    default sampling, 3 unguided lcm steps."""
    from diffusers import LCMScheduler

    from imagpose.pipeline import IMAGPosePipeline

    networks = {name: getattr(tiny_pipe, name) for name in ("unet", "vae", "image_encoder", "flc_tokenizer",
                                                              "pose_guider")}
    student = IMAGPosePipeline(scheduler=LCMScheduler.from_config(tiny_pipe.scheduler.config), **networks)
    student.default_sampling = SamplingConfig(num_inference_steps=3, guidance_scale=1.0, sampler="lcm")
    return student


def test_http_and_grpc_answers_equal_the_in_process_pipeline(tiny_pipe, repository, server):
    ort = OnnxRuntimeBackend.for_pipeline(tiny_pipe, repository / "onnx")
    requests = [request(3), request(4, POSES[1])]
    reference_ort = tiny_pipe(requests, num_inference_steps=2, runtime=ort, progress=False).results
    reference_torch = tiny_pipe(requests, num_inference_steps=2, progress=False).results
    for url in (server.http_url, server.grpc_url):
        with TritonClient(url) as client:
            assert client.ready()
            served = client.generate(requests, SETTINGS)
        for ours, onnx, torch_result in zip(served, reference_ort, reference_torch):
            assert (ours.seed, ours.name, ours.target_indices) == (onnx.seed, onnx.name, onnx.target_indices)
            assert max_level_difference(ours.canvas, onnx.canvas) <= 1, url
            assert max_level_difference(ours.canvas, torch_result.canvas) <= 1, url
            assert torch.allclose(ours.latents, onnx.latents, atol=1e-4)


def test_the_server_listens_on_loopback_only_by_default(server):
    listening = {(c.laddr.ip, c.laddr.port) for c in psutil.Process(server.process.pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN}
    assert {port for _, port in listening} >= {server.http_port, server.grpc_port, server.metrics_port}, listening
    assert {ip.removeprefix("::ffff:") for ip, _ in listening} == {"127.0.0.1"}, listening  # IPv4, or IPv4-mapped


def test_64_requests_from_8_concurrent_clients_all_get_their_own_result_in_batches(tiny_pipe, repository, server):
    ort = OnnxRuntimeBackend.for_pipeline(tiny_pipe, repository / "onnx")
    requests = [request(100 + i, POSES[i % len(POSES)]) for i in range(64)]
    reference = tiny_pipe(requests, num_inference_steps=2, runtime=ort, progress=False).results
    with TritonClient(server.http_url) as client:
        before = client.batch_sizes()
    answers, failures = [None] * 64, []

    def client_thread(k: int):
        url = server.http_url if k % 2 else server.grpc_url
        try:
            with TritonClient(url) as client:
                for i in range(k, 64, 8):  # one at a time per client: 8 in flight at once
                    answers[i] = client.generate(requests[i], SETTINGS)[0]
        except Exception as exc:  # reported below with the client that failed
            failures.append((k, exc))

    start = time.perf_counter()
    threads = [threading.Thread(target=client_thread, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    seconds = time.perf_counter() - start
    assert not failures, failures
    for i, (ours, theirs) in enumerate(zip(answers, reference)):
        assert (ours.seed, ours.name) == (theirs.seed, theirs.name), i
        assert max_level_difference(ours.targets[0], theirs.targets[0]) <= 1, i
        other = reference[(i + 1) % 64]  # another seed and pose looks different: a swap would show
        assert max_level_difference(ours.targets[0], other.targets[0]) > 8
    with TritonClient(server.grpc_url) as client:
        after = client.batch_sizes()
    formed = {size: count - before.get(size, 0) for size, count in after.items() if count > before.get(size, 0)}
    assert sum(size * count for size, count in formed.items()) == 64
    assert max(formed) > 1, formed
    print(f"64 requests, 8 clients: {seconds:.1f} s, batches formed {formed}")


def test_a_bad_request_is_a_400_naming_the_problem_and_the_server_goes_on(server):
    with TritonClient(server.http_url) as http, TritonClient(server.grpc_url) as grpc:
        with pytest.raises(InvalidArgumentError, match="refused the request: The request is not JSON"):
            http.infer_json(b"{not json")
        wrong_grid = scenarios.t2(*sample("person_red_front"), sample(POSES[0])[1], seed=0, tile_size=(64, 64),
                                  grid=(1, 2))
        with pytest.raises(InvalidArgumentError, match="bakes in the 2x2 grid; the request uses 1x2"):
            grpc.generate(wrong_grid, SETTINGS)
        assert http.generate(request(5), SETTINGS)[0].seed == 5


def test_hostile_requests_inside_a_batch_fail_alone_and_no_server_internals_reach_the_client(server):
    import json
    from concurrent.futures import ThreadPoolExecutor

    from imagpose.serving.wire import request_to_json

    from .hostile_bodies import DEEP_JSON, png_that_pil_reads_as_a_syntax_error

    bodies = [json.dumps(request_to_json(request(20 + i), SETTINGS)).encode() for i in range(7)]
    corrupt, huge_seed = json.loads(bodies[3]), json.loads(bodies[5])
    corrupt["views"][0]["image"] = png_that_pil_reads_as_a_syntax_error()
    huge_seed["seed"] = 2**80
    bodies[3], bodies[4], bodies[5] = json.dumps(corrupt).encode(), DEEP_JSON.encode(), json.dumps(huge_seed).encode()

    def send(body):
        try:
            with TritonClient(server.http_url, timeout=120) as client:
                return json.loads(client.infer_json(body))
        except InvalidArgumentError as exc:
            return exc

    with ThreadPoolExecutor(7) as pool:  # seven at once: the dynamic batcher puts them in shared batches
        answers = list(pool.map(send, bodies))
    for i in (0, 1, 2, 6):
        assert isinstance(answers[i], dict) and answers[i]["seed"] == 20 + i, answers[i]
    assert "views[0].image is not a readable image (broken PNG file" in str(answers[3])
    assert "nested too deeply" in str(answers[4])
    assert "seed must be an integer in [0, 2**63 - 1]" in str(answers[5])
    for error in answers[3:6]:
        assert isinstance(error, InvalidArgumentError) and ".py" not in str(error) and "At:" not in str(error)


def test_a_client_that_disconnects_mid_request_does_not_wedge_the_server(server):
    import json

    from imagpose.serving.wire import request_to_json

    body = json.dumps({"inputs": [{"name": "request", "shape": [1, 1], "datatype": "BYTES",
                                   "data": [json.dumps(request_to_json(request(6), SETTINGS))]}]}).encode()
    with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
        sock.sendall(b"POST /v2/models/imagpose/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.2)  # the request is in; the client goes away without reading the answer
    with TritonClient(server.http_url, timeout=60) as client:
        assert client.generate(request(7), SETTINGS)[0].seed == 7
        assert client.ready()


def test_a_network_model_that_fails_to_load_is_reported_with_its_reason_and_the_server_stops_clean(repository,
                                                                                                  tmp_path):
    broken = tmp_path / "repo"
    for name in ("vae_decoder", "flc_tokenizer"):
        shutil.copytree(repository / "repo" / name, broken / name)
    (broken / "vae_decoder" / "1" / "model.onnx").write_bytes(b"this is not an ONNX model")
    start = time.perf_counter()
    server = TritonServer(broken, wait_ready=False).start()
    try:
        with TritonClient(server.http_url) as client:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and any(state not in ("READY", "UNAVAILABLE") for state, _ in
                                                      client.model_states().values()):
                time.sleep(0.5)
            states = client.model_states()
            assert not client.ready()
        assert states["flc_tokenizer"][0] == "READY"
        assert states["vae_decoder"][0] == "UNAVAILABLE" and "model.onnx" in states["vae_decoder"][1]
        with pytest.raises(ServerNotReadyError, match="vae_decoder: .*model.onnx"):
            server.wait_until_ready()
        processes = [psutil.Process(server.process.pid)] + psutil.Process(server.process.pid).children(recursive=True)
        assert len(processes) >= 2  # the server and the stub of the model that loaded
    finally:
        started = time.perf_counter() - start
        stop = time.perf_counter()
        server.stop()
        stopped = time.perf_counter() - stop
    gone, alive = psutil.wait_procs(processes, timeout=5)
    assert not alive, alive
    print(f"broken repository: states settled in {started:.1f} s, stopped in {stopped:.1f} s")


def test_imagpose_generate_with_server_saves_what_the_local_run_saves(server, tmp_path):
    from PIL import Image

    from imagpose.cli import main

    image, pose = sample("person_red_front")
    _, target = sample(POSES[0])
    common = ["generate", "--source", str(image), str(pose), "--target", str(target), "--tile-size", "64x64",
              "--steps", "2", "--seed", "9", "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "local")]) == 0
    assert main(common + ["--server", server.grpc_url, "--out", str(tmp_path / "served")]) == 0
    local, served = sorted(p.name for p in (tmp_path / "local").iterdir()), sorted(
        p.name for p in (tmp_path / "served").iterdir())
    assert local == served and "canvas.png" in served
    for name in served:
        if name.endswith(".png"):
            assert max_level_difference(Image.open(tmp_path / "local" / name),
                                        Image.open(tmp_path / "served" / name)) <= 1, name


@pytest.mark.slow  # a second server start; the in-process orchestrator test covers the defaults in the default tier
def test_a_served_student_answers_a_request_without_settings_with_its_own_few_step_defaults(student_pipe, server_env,
                                                                                            tmp_path):
    export_pipeline(student_pipe, tmp_path / "onnx", ExportOptions(bucket=ShapeBucket(1, 64, 64, 2, 2)))
    write_repository(student_pipe, tmp_path / "repo", RepositoryOptions("python", max_batch_size=8,
                                                                        queue_delay_ms=100), onnx_dir=tmp_path / "onnx")
    ort = OnnxRuntimeBackend.for_pipeline(student_pipe, tmp_path / "onnx")
    sent = request(7)
    own_defaults = student_pipe(sent, runtime=ort, progress=False).results[0]  # lcm, 3 steps, w = 1
    paper_defaults = student_pipe(sent, runtime=ort, sampling=SamplingConfig(), progress=False).results[0]
    with TritonServer(tmp_path / "repo", log_path=tmp_path / "server.log") as server:
        with TritonClient(server.http_url) as client:
            served = client.generate(sent)[0]  # no settings: the served model's defaults
    assert max_level_difference(served.targets[0], own_defaults.targets[0]) <= 1
    assert max_level_difference(served.targets[0], paper_defaults.targets[0]) > 1  # the defaults decide the image
