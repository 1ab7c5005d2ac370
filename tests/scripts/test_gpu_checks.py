"""scripts/gpu_checks.py (and its gpu_sections, gpu_supervisor and gpu_report modules): the dry run runs every
section's GPU code path on the CPU, and the time budgets hold.

The GPU run gets one call on a lent machine, so what can go wrong in it must show here first: the dry run calls the
same functions at tiny sizes, and the budget tests kill real child processes.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_checks.py"
SECTIONS = ["env", "cva", "kernels", "bench", "trt", "train", "quant", "serve"]
# source folder -> its package in an installed imagpose (pyproject's package-dir)
PACKAGE_FOLDERS = {"imagpose": "imagpose", "export": "imagpose/export", "kernels": "imagpose/kernels",
                   "bench": "imagpose/bench", "train": "imagpose/train", "serving": "imagpose/serving"}


# the dry run of every section takes over two minutes on 2 CPU cores: slow tier (`make test-slow`), and run before
# every GPU call (`python scripts/gpu_checks.py --dry-run`)
DRY_RUN_TIER = pytest.mark.slow


def run_script(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def read_report(out: Path) -> dict:
    return json.loads((out / "gpu_report.json").read_text())


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-checks")
    # the budgets are the GPU run's: three times them keeps a slow or busy CPU from timing the dry run out
    done = run_script("--dry-run", "--budget-scale", "3", "--out", str(root / "out"), "--workdir", str(root / "work"),
                      timeout=1800)
    return root / "out", done


@DRY_RUN_TIER
def test_dry_run_ends_every_section_ok(dry_run):
    out, done = dry_run
    report = read_report(out)
    problems = {name: (entry["status"], entry.get("error"), entry.get("log_tail"))
                for name, entry in report["sections"].items() if entry["status"] != "ok"}
    assert not problems, problems
    assert list(report["sections"]) == SECTIONS and report["finished"] and report["dry_run"]
    assert done.returncode == 0, done.stdout + done.stderr
    markdown = (out / "gpu_report.md").read_text()
    assert all(f"## {name}\n\nStatus: **ok**" in markdown for name in SECTIONS)
    assert (out / "gpu_checks.log").is_file()


@DRY_RUN_TIER
def test_dry_run_records_what_each_section_measures(dry_run):
    out, _ = dry_run
    results = {name: entry["results"] for name, entry in read_report(out)["sections"].items()}
    assert results["env"]["versions"]["imagpose"] and results["env"]["top_level_folders_importable"] == []
    cva = results["cva"]
    assert all(cva[backend]["median_ms"] > 0 for backend in ("eager", "sdpa", "triton"))
    assert cva["triton"]["sqnr_db_vs_eager"] > 80 and cva["sdpa"]["sqnr_db_vs_eager"] > 80  # fp32: same math
    kernels = results["kernels"]
    assert kernels["tests"]["passed"] > 0 and kernels["tests"]["failed"] == kernels["tests"]["errors"] == 0
    assert all(kernels[f"bench_{name}"] for name in ("attention", "group_norm_to_tokens", "layer_norm_view_pe",
                                                      "tokens_to_canvas"))
    bench = results["bench"]
    assert [row["label"] for row in bench["scenarios"]] == ["imagpose/as_released/tiny"]
    assert bench["scenarios"][0]["error"] is None and bench["scenarios"][0]["seconds_per_image"] > 0
    assert [row["backend"] for row in bench["parity"]] == ["triton-cva"] and "error" not in bench["parity"][0]
    assert json.loads((out / "bench" / "results.json").read_text())["results"]
    trt = results["trt"]
    assert trt["export"]["node_counts"] and trt["check_trt"]["passed"]
    assert trt["engine_plan"][0]["trtexec"].startswith("trtexec --onnx=")
    assert "TensorRT" in trt["stopped_before_builder"] and "build" not in trt  # stopped right before the builder
    train = results["train"]
    assert train["setup"]["gradient_checkpointing"] and train["setup"]["preset"] == "tiny"
    for stage, batch_size in (("stage1", 2), ("stage2", 4), ("end2end", 1)):
        row = train[stage]
        assert row["batch_size"] == batch_size and row["samples_per_s"] > 0 and row["finite"], row
        assert len(row["losses"]) == 2 and row["peak_memory_gib"] is None  # warm-up + timed step; no CUDA
    assert train["stage2"]["trainable_parameters"] < train["stage1"]["trainable_parameters"] < train["end2end"][
        "trainable_parameters"]  # CVA only < UNet without CVA + pose guider + FLC < everything


@DRY_RUN_TIER
def test_dry_run_quant_section_exports_int8_and_fp8_and_stops_before_the_builder(dry_run):
    out, _ = dry_run
    quant = read_report(out)["sections"]["quant"]["results"]
    for precision in ("int8", "fp8"):
        export = quant[f"{precision}_export"]
        assert export["check_trt_passed"] and export["blockers"] == [] and export["megabytes"] > 0, export
    if importlib.util.find_spec("tensorrt") is None:
        assert "TensorRT is not installed" in quant["stopped_before_builder"]


def test_a_section_over_its_budget_is_killed_with_its_partial_results_and_the_next_runs(tmp_path):
    """Budgets 5 s (cva) and 6 s (trt): both sections record their setup at once, and neither can finish in that
    time (imports alone take seconds, the Triton interpreter's UNet step more; the trt export tens of seconds)."""
    start = time.monotonic()
    done = run_script("--dry-run", "--only", "trt", "--only", "cva", "--budget-scale", "0.05", "--out",
                      str(tmp_path / "out"), "--workdir", str(tmp_path / "work"), timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    report = read_report(tmp_path / "out")
    assert list(report["sections"]) == ["cva", "trt"] and report["finished"]  # priority order, not --only order
    cva, trt = report["sections"]["cva"], report["sections"]["trt"]
    assert cva["status"] == "timeout after 5 s" and cva["results"]["setup"]["preset"] == "tiny"
    assert trt["status"] == "timeout after 6 s" and trt["results"]["setup"]["onnx_dtype"] == "fp16"
    assert "| cva | timeout after 5 s |" in (tmp_path / "out" / "gpu_report.md").read_text()
    assert not is_alive(cva["pid"]) and not is_alive(trt["pid"])
    assert time.monotonic() - start < 60


def test_a_stopped_run_leaves_its_report_and_no_running_section(tmp_path):
    """A whole command cut short (here SIGTERM, as `timeout` sends) keeps what was recorded and ends its child."""
    out = tmp_path / "out"
    parent = subprocess.Popen([sys.executable, str(SCRIPT), "--dry-run", "--only", "trt", "--out", str(out),
                               "--workdir", str(tmp_path / "work")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while "setup" not in _results(out, "trt") and time.monotonic() < deadline:
        time.sleep(0.2)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) == 128 + signal.SIGTERM
    report = read_report(out)
    trt = report["sections"]["trt"]
    assert not report["finished"] and trt["status"] == "running" and trt["results"]["setup"]
    assert not is_alive(trt["pid"])


def _results(out: Path, section: str) -> dict:
    try:
        return read_report(out)["sections"][section].get("results", {})
    except (OSError, json.JSONDecodeError):
        return {}


def test_the_device_install_holds_every_module_and_data_file(tmp_path):
    """docs/gpu.md installs imagpose on the device with `pip install --no-index --no-deps --no-build-isolation
    --target`: that install must hold every module and data file of the source folders (a subpackage missing from
    pyproject's package list works in the editable install and fails only there)."""
    pytest.importorskip("setuptools")  # --no-build-isolation builds with the environment's own setuptools
    source = tmp_path / "src"  # a copy: an in-tree build would write build/ into the repository
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in PACKAGE_FOLDERS:
        shutil.copytree(REPO / folder, source / folder, ignore=ignore)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation",
                    "--target", str(tmp_path / "site"), str(source)], check=True, timeout=300)
    expected = {f"{package}/{path.relative_to(source / folder)}" for folder, package in PACKAGE_FOLDERS.items()
                for path in (source / folder).rglob("*") if path.is_file()}
    installed = {str(path.relative_to(tmp_path / "site")) for path in (tmp_path / "site" / "imagpose").rglob("*")
                 if path.is_file() and "__pycache__" not in path.parts}
    missing = sorted(expected - installed)
    assert not missing, f"not in the installed package (pyproject.toml [tool.setuptools]): {missing}"


def test_the_gpu_benchmark_runs_the_scenarios_that_matter_first(monkeypatch):
    from imagpose.bench.scenarios import METHODS, SETTINGS, build_suite

    (gpu_sections,) = load_scripts(monkeypatch, "gpu_sections")

    suite = build_suite(METHODS, SETTINGS, ("eager", "triton-cva", "tensorrt"))
    order = [s.label for s in gpu_sections.by_priority(suite)]
    assert order[:4] == ["imagpose/as_released/full", "imagpose[triton-cva]/as_released/full",
                         "imagpose_star/as_released/full", "imagpose_star[triton-cva]/as_released/full"]
    first_baseline, first_tensorrt = order.index("pidm/as_released/full"), order.index(
        "imagpose[tensorrt]/as_released/full")
    first_common = next(i for i, label in enumerate(order) if "common_policy" in label)
    assert first_baseline < first_tensorrt < first_common and len(order) == 16


def test_skip_leaves_sections_out_and_only_still_selects(monkeypatch):
    gpu_checks, gpu_sections, gpu_supervisor = load_scripts(monkeypatch, "gpu_checks", "gpu_sections",
                                                            "gpu_supervisor")

    def names(*argv):
        return [s.name for s in gpu_supervisor.selected_sections(gpu_checks.parse_args(list(argv)))]

    assert names() == SECTIONS
    first = names("--skip", "train", "--skip", "quant", "--skip", "serve")  # the device calls of docs/gpu.md
    second = names("--only", "env", "--only", "quant", "--only", "serve")
    third = names("--only", "train", "--only", "env")
    assert first == ["env", "cva", "kernels", "bench", "trt"] and second == ["env", "quant", "serve"]
    assert third == ["env", "train"]
    assert names("--only", "cva", "--skip", "cva") == []
    budgets = {s.name: s.budget_s for s in gpu_sections.SECTIONS}
    for call in (first, second, third):
        assert sum(budgets[name] for name in call) <= 480  # each fits one 10-minute command


def test_the_train_section_uses_the_sd15_presets_batch_sizes(monkeypatch):
    from imagpose.train.config import STAGES, load_config

    (gpu_sections,) = load_scripts(monkeypatch, "gpu_sections")
    sd15 = load_config("sd15")
    assert gpu_sections.TRAIN_BATCH_SIZES == {name: sd15.stages[name].batch_size for name in STAGES}
    plan = gpu_sections.gpu_plan(512)
    assert plan.preset == sd15.model and plan.train_autocast == "bfloat16" and plan.tile == 512


def load_scripts(monkeypatch, *names: str) -> list:
    """Modules of scripts/, imported by their file names as gpu_checks.py imports its siblings."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    return [importlib.import_module(name) for name in names]


@pytest.mark.slow
def test_the_tensorrt_part_of_the_trt_section_with_a_stand_in_runtime(monkeypatch):
    """What the trt section runs after the engine build (only with tensorrt and a GPU): the UNet step latency and
    the parity against fp32. A runtime with the fp16 engine's interface (fp32 PyTorch behind a cast) stands in
    for the engines, at the dry run's sizes."""
    import torch

    from imagpose.export.parity import CastRuntime
    from imagpose.presets import build_pipeline

    (gpu_sections,) = load_scripts(monkeypatch, "gpu_sections")
    pipe, records = build_pipeline("tiny", seed=0), {}
    stand_in = CastRuntime(pipe.torch_runtime(), torch.float32, name="tensorrt")
    gpu_sections.trt_latency_and_parity(gpu_sections.DRY_RUN, pipe, stand_in,
                                        gpu_sections.bucket_of(gpu_sections.DRY_RUN), records.__setitem__)
    assert records["unet_step_ms"]["torch_fp16"] > 0 and records["unet_step_ms"]["tensorrt_fp16"] > 0
    rows = {(row["backend"], row["component"]) for row in records["parity"]["components"]}
    assert ("tensorrt", "unet") in rows and ("torch-fp16", "unet") in rows and records["parity"]["passed"]


@DRY_RUN_TIER
def test_dry_run_serve_section_writes_and_validates_a_repository_and_times_clients(dry_run):
    out, _ = dry_run
    serve = read_report(out)["sections"]["serve"]["results"]
    assert "TensorRT is not installed" in serve["no_tensorrt"]
    repository = serve["repository"]
    assert repository["flavour"] == "python" and repository["problems"] == []
    assert repository["models"] == sorted(["imagpose", "image_encoder", "flc_tokenizer", "pose_guider", "unet",
                                           "vae_encoder", "vae_decoder"])
    clients = serve["concurrent_clients"]
    assert list(clients) == ["1", "4", "16"]
    assert [clients[k]["requests"] for k in clients] == [1, 4, 16]
    assert all(clients[k]["requests_per_s"] > 0 and clients[k]["p95_s"] >= clients[k]["p50_s"] for k in clients)
