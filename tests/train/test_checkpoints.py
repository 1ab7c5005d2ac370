"""Checkpoints read back whole, or a DamagedCheckpointError names the file; the newest usable one is found."""

import json

import pytest
import torch

from imagpose.train.checkpoints import (
    DamagedCheckpointError,
    load_checkpoint,
    load_latest_usable,
    save_checkpoint,
)


def write(out, step):
    weights = {"unet.weight": torch.full((4, 4), float(step))}
    optimizer = {"state": {0: {"exp_avg": torch.ones(4, 4), "step": torch.tensor(float(step))}},
                 "param_groups": [{"lr": 1e-3, "params": [0]}]}
    return save_checkpoint(out, step, weights, optimizer, {"lr_schedule": {"last_epoch": step}}, keep=5)


def damage_state(value):
    return lambda folder: (folder / "state.json").write_text(json.dumps(value))


@pytest.mark.parametrize("damage, words", [
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:50]),
     "model.safetensors cannot be read"),
    (lambda f: (f / "optimizer.pt").write_bytes(b"\x80\x04not a torch file"), "optimizer.pt cannot be read"),
    (lambda f: (f / "state.json").write_text("{"), "state.json is not valid JSON"),
    (damage_state([1, 2]), "state.json does not hold a JSON object (it holds a list)"),
    (damage_state({"step": "2", "lr_schedule": {}, "numpy_rng": {}}), "(step missing or of the wrong type)"),
    (damage_state({"step": 3, "lr_schedule": {}, "numpy_rng": {}}), "says step 3, but its folder is step-000002"),
    (lambda f: (f / "rng.safetensors").unlink(), "lacks rng.safetensors"),
])
def test_a_damaged_checkpoint_names_its_file(tmp_path, damage, words):
    folder = write(tmp_path, 2)
    damage(folder)
    with pytest.raises(DamagedCheckpointError) as error:
        load_checkpoint(folder)
    assert words in str(error.value) and str(folder) in str(error.value)


def test_the_newest_usable_checkpoint_is_found_and_the_damaged_ones_are_reported(tmp_path):
    assert load_latest_usable(tmp_path) == (None, None, [])
    for step in (1, 2, 3):
        write(tmp_path, step)
    (tmp_path / "checkpoints" / "step-000003" / "state.json").write_text("[]")
    folder, saved, passed_over = load_latest_usable(tmp_path)
    assert folder.name == "step-000002" and saved["state"]["step"] == 2
    assert torch.equal(saved["model"]["unet.weight"], torch.full((4, 4), 2.0))
    assert len(passed_over) == 1 and "Passing over step-000003" in passed_over[0]
    assert (tmp_path / "checkpoints" / "step-000003").is_dir()  # left as it is
    for step in (1, 2):
        (tmp_path / "checkpoints" / f"step-{step:06d}" / "optimizer.pt").write_bytes(b"")
    with pytest.raises(DamagedCheckpointError, match="(?s)No checkpoint of this run reads back whole.*step-000001"):
        load_latest_usable(tmp_path)
