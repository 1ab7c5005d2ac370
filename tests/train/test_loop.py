"""The training loop: exact resume, and two accelerate processes computing what one process does."""

import csv
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from imagpose.errors import InvalidArgumentError
from imagpose.train.checkpoints import list_checkpoints
from imagpose.train.config import load_config
from imagpose.train.stage_training import run_stage

QUICK = ["stages.stage1.steps=4", "stages.stage1.batch_size=2", "stages.stage1.checkpoint_every=2",
         "stages.stage1.keep_checkpoints=1", "validation.num_requests=0", "data.max_scale=1.2",
         "optimizer.warmup_steps=1"]


def losses(out):
    with open(out / "log.csv", newline="") as handle:
        return [(int(row["step"]), float(row["loss"])) for row in csv.DictReader(handle)]


@pytest.mark.parametrize("ema", [False, True])
def test_stopping_and_resuming_gives_the_uninterrupted_run(people_dataset, tmp_path, ema):
    config = load_config("tiny", [*QUICK, *(["ema_decay=0.9"] if ema else [])])
    whole = run_stage(config, "stage1", people_dataset, tmp_path / "whole", progress=False)
    assert whole.steps == 4 and (tmp_path / "whole" / "pipeline" / "model_index.json").is_file()

    part = tmp_path / "part"
    stopped = run_stage(config, "stage1", people_dataset, part, stop_after=1, progress=False)
    assert stopped.steps == 1 and not (part / "pipeline").exists()
    assert [step for step, _ in list_checkpoints(part)] == [1]
    with pytest.raises(InvalidArgumentError, match="--resume"):  # a fresh run would overwrite it
        run_stage(config, "stage1", people_dataset, part, progress=False)
    run_stage(config, "stage1", people_dataset, part, resume=True, progress=False)

    assert losses(part) == losses(tmp_path / "whole")  # bit for bit: weights, AdamW state, LR, data, draws
    assert [step for step, _ in list_checkpoints(part)] == [4]  # pruned to the last one
    final = load_file(str(tmp_path / "whole" / "checkpoints" / "step-000004" / "model.safetensors"))
    resumed = load_file(str(part / "checkpoints" / "step-000004" / "model.safetensors"))
    assert final.keys() == resumed.keys() and all(torch.equal(final[k], resumed[k]) for k in final)
    if ema:  # the EMA goes through accelerate's save_state / load_state too, in safetensors
        final, resumed = (load_file(str(run / "checkpoints" / "step-000004" / "ema.safetensors"))
                          for run in (tmp_path / "whole", part))
        assert final.keys() == resumed.keys() and all(torch.equal(final[k], resumed[k]) for k in final)
        product = load_file(str(part / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"))
        assert torch.equal(product["conv_in.weight"], resumed["unet.conv_in.weight"])  # the product is the EMA
    assert (part / "loss.png").is_file() and (part / "data_check.txt").read_text().startswith(str(people_dataset))


NEEDS_ACCELERATE_CLI = pytest.mark.skipif(shutil.which("accelerate") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "accelerate")), reason="accelerate CLI not installed")
COMMON = ["train", "run", "--stage", "stage1", "--no-progress",
          *sum((["--set", item] for item in QUICK[:1] + QUICK[3:]), [])]
CPU_ENV = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}


def two_processes(data, out, *extra):
    """`accelerate launch --num_processes 2` on the CPU (gloo), batch 1 each."""
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    run = subprocess.run([accelerate, "launch", "--config_file", "train/accelerate/cpu_2proc.yaml",
                          "-m", "imagpose.cli", *COMMON, "--data", str(data), "--out", str(out),
                          "--set", "stages.stage1.batch_size=1", *extra], env=CPU_ENV, capture_output=True, text=True,
                         timeout=600, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert run.returncode == 0, run.stderr[-3000:]


@NEEDS_ACCELERATE_CLI
def test_two_processes_match_one_process_with_the_same_global_batch(people_dataset, tmp_path):
    """accelerate launch --num_processes 2 on the CPU (gloo), batch 1 each, against one process with batch 2."""
    two_processes(people_dataset, tmp_path / "two")
    one = subprocess.run([sys.executable, "-m", "imagpose.cli", *COMMON, "--data", str(people_dataset), "--out",
                          str(tmp_path / "one"), "--set", "stages.stage1.batch_size=2"], env=CPU_ENV,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4]
    # same samples, same draws; only the order of float reductions differs (gloo all-reduce vs one batch)
    assert all(abs(x - y) <= 1e-5 * max(1.0, abs(x)) for (_, x), (_, y) in zip(a, b)), (a, b)
    first, second = (load_file(str(tmp_path / run / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"))
                     for run in ("one", "two"))
    worst = max(float((first[k] - second[k]).abs().max()) for k in first)
    print(f"2 processes vs 1: losses {a} vs {b}; largest weight difference {worst:.2e}")
    assert worst < 1e-4, worst


@pytest.mark.slow  # four process launches; the one-process resume above is in the default tier
@NEEDS_ACCELERATE_CLI
def test_two_processes_stopped_and_resumed_are_the_uninterrupted_run(people_dataset, tmp_path):
    """DDP resume: stopped after step 2 and resumed, still on two processes, each with its own RNG state."""
    two_processes(people_dataset, tmp_path / "two")
    two_processes(people_dataset, tmp_path / "resumed", "--stop-after", "2")
    stopped = tmp_path / "resumed" / "checkpoints" / "step-000002"
    assert {p.name for p in stopped.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    two_processes(people_dataset, tmp_path / "resumed", "--resume")
    assert losses(tmp_path / "resumed") == losses(tmp_path / "two")
    whole, resumed = (load_file(str(tmp_path / run / "checkpoints" / "step-000004" / "model.safetensors"))
                      for run in ("two", "resumed"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


@pytest.mark.parametrize("learning_rate", ["1e30", ".inf"])
def test_a_diverging_run_stops_with_the_step_and_saves_no_product(people_dataset, tmp_path, learning_rate):
    from imagpose.train.loop import TrainingDivergedError

    config = load_config("tiny", [*QUICK, "stages.stage1.steps=2", f"stages.stage1.learning_rate={learning_rate}"])
    with pytest.raises(TrainingDivergedError, match=r"at step \d.*lower the learning rate"):
        run_stage(config, "stage1", people_dataset, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "pipeline").exists() and not list_checkpoints(tmp_path / "run")


def test_a_damaged_newest_checkpoint_is_passed_over_and_the_previous_one_resumes_exactly(people_dataset, tmp_path,
                                                                                         capsys):
    config = load_config("tiny", [*QUICK, "stages.stage1.checkpoint_every=1", "stages.stage1.keep_checkpoints=2"])
    out = tmp_path / "run"
    run_stage(config, "stage1", people_dataset, out, stop_after=2, progress=False)
    first_two = losses(out)
    damaged = out / "checkpoints" / "step-000002" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])  # truncated, as a full disk or a kill mid-copy leaves it
    run_stage(config, "stage1", people_dataset, out, resume=True, progress=False)
    printed = capsys.readouterr().out
    assert f"{damaged} cannot be read" in printed and "Passing over step-000002" in printed
    assert "from " in printed and "(step 1)" in printed
    assert losses(out)[:2] == first_two and [step for step, _ in losses(out)] == [1, 2, 3, 4]


def test_log_csv_is_an_output_a_resume_rewrites_from_the_checkpoint(people_dataset, tmp_path):
    config = load_config("tiny", QUICK)
    out = tmp_path / "run"
    run_stage(config, "stage1", people_dataset, out, stop_after=1, progress=False)
    first = losses(out)
    (out / "log.csv").write_text("step,loss,lr,samples_per_second,seconds\n1,lots,0.1,1,1\n")  # damaged by hand
    run_stage(config, "stage1", people_dataset, out, resume=True, progress=False)
    assert losses(out)[:1] == first and [step for step, _ in losses(out)] == [1, 2, 3, 4]


def test_resuming_with_other_data_or_schedule_settings_is_refused_naming_them(people_dataset, tmp_path):
    out = tmp_path / "run"
    run_stage(load_config("tiny", QUICK), "stage1", people_dataset, out, stop_after=1, progress=False)
    changed = load_config("tiny", [*QUICK, "stages.stage1.batch_size=1", "seed=7"])
    with pytest.raises(InvalidArgumentError, match=r"step-000001 was trained with other settings than this run's "
                                                   r"\(seed: \d+ -> 7; stages.stage1.batch_size: 2 -> 1\)"):
        run_stage(changed, "stage1", people_dataset, out, resume=True, progress=False)
    logging_only = load_config("tiny", [*QUICK, "stages.stage1.log_every=2"])  # may change
    assert run_stage(logging_only, "stage1", people_dataset, out, resume=True, progress=False).steps == 4
