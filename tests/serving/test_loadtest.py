"""imagpose loadtest drives a running server through its client and writes what it measured: against the Ray Serve
service (the folder's shared `imagpose serve`, ray_fixture.py), end to end on small numbers; its requests are
distinct; a server that does not answer is a one-line error before anything is written."""

import json
import threading

import pytest
import torch

from imagpose.cli import main
from imagpose.pipeline import GenerationResult
from imagpose.sampling_config import SamplingConfig
from imagpose.serving import load
from imagpose.serving.load import LoadReport, format_table, sample_requests

from .ray_fixture import free_port, shared_service


@pytest.fixture(scope="module")
def ray_service(request):
    return shared_service(request.config)


def test_loadtest_runs_end_to_end_on_the_ray_service(ray_service, tmp_path, capsys):
    out = tmp_path / "load"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["loadtest", "--server", ray_service.url, "--server-kind", "ray", "--clients", "4", "--requests", "12",
                 "--steps", "2", "--tile-size", "64x64", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["succeeded"] == 12 and results["failed"] == 0 and results["errors"] == []
    assert results["clients"] == 4 and results["tile_size"] == [64, 64]
    assert results["settings"]["num_inference_steps"] == 2
    assert results["throughput_requests_per_s"] > 0
    latency = results["latency_seconds"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    formed = {int(size): count for size, count in results["batch_sizes"].items()}
    assert sum(size * count for size, count in formed.items()) == 12, formed  # this run's batches only
    assert (out / "loadtest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["loadtest.png", "notes.txt", "results.json"]
    table = capsys.readouterr().out
    assert "throughput" in table and "p95" in table and "batch sizes" in table


def test_the_load_is_distinct_requests_on_the_shipped_samples():
    requests = sample_requests(25, (64, 64), seed=7)
    assert [r.seed for r in requests] == list(range(7, 32))
    assert len({r.name for r in requests}) == 25
    assert len({r.name.split("-", 2)[2] for r in requests}) == 8  # every (person, target pose) pair of the samples
    assert all(r.tile_size == (64, 64) for r in requests)


def test_the_table_reports_percentiles_and_batches():
    report = LoadReport("http://x", "ray", 2, 4, {"num_inference_steps": 2, "guidance_scale": 2.0, "sampler": "ddim"},
                        [64, 64], 2.0, [0.1, 0.2, 0.3, 0.4], [], {1: 2, 2: 1})
    assert report.throughput == 2.0 and report.mean_batch == pytest.approx(4 / 3)
    assert report.percentiles()["p50"] == pytest.approx(0.25)
    table = format_table(report)
    assert "2.00 requests/s" in table and "p50 250 ms" in table and "1x2, 2x1" in table


def test_a_server_that_does_not_answer_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "load"
    assert main(["loadtest", "--server", f"http://127.0.0.1:{free_port()}", "--server-kind", "ray", "--requests", "2",
                 "--tile-size", "64x64", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "is not ready" in error
    assert not out.exists()


def test_bad_counts_stop_the_command_while_it_parses(capsys):
    with pytest.raises(SystemExit):
        main(["loadtest", "--server", "http://x", "--server-kind", "ray", "--clients", "0"])
    assert "expected an integer >= 1" in capsys.readouterr().err


class ThreadBoundClient:
    """A client usable only on the thread that made it, as tritonclient's HTTP client (gevent); answers at once."""

    def __init__(self, url, **options):
        self.url, self.thread = url, threading.get_ident()

    def _check(self):
        assert threading.get_ident() == self.thread, "used on another thread than the one that made it"

    def generate(self, requests, sampling=None):
        self._check()
        return [GenerationResult([], [3], None, torch.zeros(1), r.seed, r.name) for r in requests]

    def ready(self):
        self._check()
        return True

    def batch_sizes(self):
        self._check()
        return {1: 0}

    def close(self):
        self._check()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_each_client_stays_on_the_thread_that_made_it(monkeypatch):
    monkeypatch.setattr(load, "connect", lambda url, kind, **options: ThreadBoundClient(url, **options))
    report = load.run_load("http://x", "triton", sample_requests(12, (64, 64)), SamplingConfig(2), clients=4)
    assert report.succeeded == 12 and report.errors == []
