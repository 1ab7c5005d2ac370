"""The `train all` recipe as a library call: every phase at toy sizes, the record it leaves, and resume."""

import json

import pytest

from imagpose.errors import InvalidArgumentError
from imagpose.loading import load_pipeline
from imagpose.train.recipe import RecipeOptions, train_all

TOY = (*(f"stages.{stage}.{key}={value}" for stage in ("stage1", "stage2", "end2end")
         for key, value in (("steps", 1), ("batch_size", 2), ("checkpoint_every", 1), ("validate_every", 1))),
       "autoencoder.decoder_steps=1", "autoencoder.eval_every=1", "validation.num_requests=1",
       "validation.inference_steps=1", "data.tile_size=[64,48]")


def test_the_recipe_runs_every_phase_records_its_command_and_resumes(tmp_path):
    options = RecipeOptions(identities=4, eval_identities=2, vae_steps=1, eval_steps=1, overrides=TOY)
    lines = []
    result = train_all(tmp_path / "run", options, progress=False, log=lines.append)
    assert set(result.timing) == {"data", "vae", "stages", "vae_decoder", "heldout_data", "eval", "total"}
    assert [stage.name for stage in result.stages] == ["stage1", "stage2", "end2end"]
    assert result.evaluation.summary["counts"] == {"items": 1, "identities": 1}
    record = json.loads((result.pipeline / "training.json").read_text())
    assert record["command"] == options.command() and "--vae-steps 1" in record["command"]
    assert record["tile_size"] == [64, 48] and record["held_out"] == {"identities": 2, "seed": 1000}
    assert load_pipeline(result.pipeline).unet is not None
    shipped_text = "".join(path.read_text() for path in result.pipeline.rglob("*.json"))
    assert str(tmp_path) not in shipped_text  # the folder travels: paths are recorded relative to the run (OUT/...)
    assert record["evaluation"]["settings"]["model"] == "OUT/end2end/pipeline"

    lines.clear()
    again = train_all(tmp_path / "run", options, resume=True, progress=False, log=lines.append)
    assert all(" kept " in line for line in lines) and len(lines) == 6
    assert again.timing == result.timing and again.evaluation is None
    with pytest.raises(InvalidArgumentError, match="already holds a run"):
        train_all(tmp_path / "run", options, progress=False)


@pytest.mark.parametrize("options, match", [
    (dict(eval_seed=0), "--eval-seed must differ from --seed"),
    (dict(identities=1), "identities must be an integer >= 2"),
    (dict(vae_steps=0), "vae_steps must be an integer >= 1"),
    (dict(seed=-1), r"seed must be an integer in \[0, 2\*\*63 - 1\]"),
])
def test_bad_options_are_refused_when_made(options, match):
    with pytest.raises(InvalidArgumentError, match=match):
        RecipeOptions(**options)
