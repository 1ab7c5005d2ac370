"""Checkpoints through accelerate's save_state: staged and renamed into place, pruned, read back whole or a
DamagedCheckpointError names the file; the newest usable one is found."""

import json

import pytest
import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel

from imagpose.train.checkpoints import (
    DamagedCheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_latest_usable,
    register_ema,
    save_checkpoint,
    verify_checkpoint,
)


def trained(seed=0, ema=False):
    torch.manual_seed(seed)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)
    model, optimizer, schedule = accelerator.prepare(model, optimizer, schedule)
    average = EMAModel(list(model.parameters()), decay=0.5) if ema else None
    if average is not None:
        register_ema(accelerator, average, ["weight", "bias"])
    return accelerator, model, optimizer, schedule, average


def step(accelerator, model, optimizer, schedule, average):
    accelerator.backward(model(torch.ones(2, 4)).square().sum())
    optimizer.step(), schedule.step(), optimizer.zero_grad()
    if average is not None:
        average.step(model.parameters())


def write(out, at, keep=5, **parts):
    accelerator = parts.pop("accelerator")
    return save_checkpoint(accelerator, out, at, {"stage": "t", "samples_seen": 2 * at, "log": [{"step": at}]}, keep)


def test_a_checkpoint_reads_back_exactly_with_its_ema_and_old_ones_are_pruned(tmp_path):
    accelerator, model, optimizer, schedule, average = parts = trained(ema=True)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "notes.txt").write_text("mine")  # not the trainer's: left alone
    for at in (1, 2, 3):
        step(*parts)
        write(tmp_path, at, keep=2, accelerator=accelerator)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["notes.txt", "step-000002", "step-000003"]
    saved = [p.detach().clone() for p in (*model.parameters(), *average.shadow_params)]
    lr = schedule.get_last_lr()
    step(*parts)  # move on, then go back
    state = verify_checkpoint(tmp_path / "checkpoints" / "step-000003", ema=True)
    load_checkpoint(accelerator, tmp_path / "checkpoints" / "step-000003")
    assert state["samples_seen"] == 6 and state["log"] == [{"step": 3}]
    assert all(torch.equal(a, b) for a, b in zip(saved, (*model.parameters(), *average.shadow_params)))
    assert schedule.get_last_lr() == lr and average.optimization_step == 3


def test_an_interrupted_save_leaves_no_checkpoint_and_is_cleared_by_the_next(tmp_path):
    accelerator, *rest = parts = trained()
    partial = tmp_path / "checkpoints" / ".step-000001.partial"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"half")  # what a kill during save_state leaves
    assert list_checkpoints(tmp_path) == []
    step(*parts)
    write(tmp_path, 1, accelerator=accelerator)
    assert not partial.exists() and [s for s, _ in list_checkpoints(tmp_path)] == [1]


def damage_state(value):
    return lambda folder: (folder / "state.json").write_text(json.dumps(value))


@pytest.mark.parametrize("damage, words", [
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:50]),
     "model.safetensors cannot be read"),
    (lambda f: (f / "optimizer.bin").write_bytes(b"\x80\x04not a torch file"), "optimizer.bin cannot be read"),
    (lambda f: (f / "random_states_0.pkl").write_bytes(b""), "random_states_0.pkl cannot be read"),
    (lambda f: (f / "state.json").write_text("{"), "state.json is not valid JSON"),
    (damage_state([1, 2]), "state.json does not hold a JSON object (it holds a list)"),
    (damage_state({"step": "2", "samples_seen": 4, "log": []}), "(step missing or of the wrong type)"),
    (damage_state({"step": 3, "samples_seen": 4, "log": []}), "says step 3, but its folder is step-000002"),
    (lambda f: (f / "scheduler.bin").unlink(), "lacks scheduler.bin"),
    (lambda f: (f / "model.safetensors").unlink(), "holds no model weights"),
    (lambda f: [(f / name).write_bytes(b"") for name in ("optimizer.pt", "rng.safetensors")],
     "was written by an earlier imagpose (its own format"),
])
def test_a_damaged_checkpoint_names_its_file(tmp_path, damage, words):
    accelerator, *_ = trained()
    folder = write(tmp_path, 2, accelerator=accelerator)
    damage(folder)
    with pytest.raises(DamagedCheckpointError) as error:
        verify_checkpoint(folder)
    assert words in str(error.value) and str(folder) in str(error.value)


def test_the_newest_usable_checkpoint_is_found_and_the_damaged_ones_are_reported(tmp_path):
    assert load_latest_usable(tmp_path) == (None, None, [])
    accelerator, *_ = trained()
    for at in (1, 2, 3):
        write(tmp_path, at, accelerator=accelerator)
    (tmp_path / "checkpoints" / "step-000003" / "state.json").write_text("[]")
    folder, state, passed_over = load_latest_usable(tmp_path)
    assert folder.name == "step-000002" and state["step"] == 2
    assert len(passed_over) == 1 and "Passing over step-000003" in passed_over[0]
    assert (tmp_path / "checkpoints" / "step-000003").is_dir()  # left as it is
    for at in (1, 2):
        (tmp_path / "checkpoints" / f"step-{at:06d}" / "optimizer.bin").write_bytes(b"")
    with pytest.raises(DamagedCheckpointError, match="(?s)No checkpoint of this run reads back whole.*step-000001"):
        load_latest_usable(tmp_path)
