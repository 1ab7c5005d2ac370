"""imagpose.train.config: the sd15 preset is the official training setup; YAML files and overrides are validated
key by key with errors that name the key."""

import pytest
import yaml

from imagpose.errors import InputFileError, InvalidArgumentError
from imagpose.train.config import (
    DISTILL_STAGE,
    STAGES,
    StageConfig,
    TrainConfig,
    config_from_dict,
    load_config,
    preset_names,
)


def test_the_sd15_preset_is_the_official_training_setup():
    """configs/train_stage1.yaml, train_stage2.yaml, train_end2end.yaml and the README's step counts
    (reference: imagpose-official.md section 4)."""
    config = load_config("sd15")
    assert (config.model, config.seed, config.mixed_precision, config.gradient_checkpointing) == (
        "sd15", 12580, "fp16", True)
    assert config.ema_decay is None
    objective = config.objective
    assert (objective.prediction_type, objective.snr_gamma, objective.noise_offset) == ("v_prediction", 5.0, 0.05)
    optimizer = config.optimizer
    assert (optimizer.betas, optimizer.weight_decay, optimizer.eps) == ((0.9, 0.999), 1e-2, 1e-8)
    assert (optimizer.lr_scheduler, optimizer.warmup_steps, optimizer.max_grad_norm) == ("constant", 1, 1.0)
    assert (config.data.tile_size, config.data.grid) == ((512, 512), (2, 2))
    stages = {name: (s.steps, s.batch_size, s.learning_rate, s.gradient_accumulation_steps, s.checkpoint_every)
              for name, s in config.stages.items() if name in STAGES}  # (distill is not an official stage)
    assert stages == {"stage1": (50000, 2, 5e-5, 1, 20000), "stage2": (200000, 4, 5e-5, 1, 10000),
                      "end2end": (50000, 1, 1e-6, 1, 10000)}
    assert sum(config.stages[name].steps for name in STAGES) == 300000  # the paper's 300k steps
    # stage 2 trains on 512 (W) x 768 (H) tiles, the others on 512x512
    assert [config.tile_size(s) for s in STAGES] == [(512, 512), (768, 512), (512, 512)]
    weights = config.weights
    assert (weights.pretrained_unet, weights.vae, weights.image_encoder, weights.motion_module) == (None,) * 4


def test_the_defaults_are_the_official_values():
    """A YAML file that names only its stages trains as the official code does."""
    default, sd15 = TrainConfig(), load_config("sd15")
    assert default.objective == sd15.objective and default.optimizer == sd15.optimizer
    assert default.seed == sd15.seed


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_round_trips_through_plain_data(name):
    config = load_config(name)
    assert set(config.stages) == {*STAGES, DISTILL_STAGE}
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict())))
    assert again == config


def test_overrides_set_dotted_keys_with_yaml_values():
    config = load_config("sd15", overrides=["stages.stage1.steps=7", "objective.prediction_type=epsilon",
                                            "data.tile_size=[256, 192]", "weights.vae=/models/vae", "ema_decay=0.999",
                                            "stages.stage2.learning_rate=1e-4"])
    assert config.stages["stage1"].steps == 7 and config.stages["stage2"].steps == 200000
    assert config.objective.prediction_type == "epsilon" and config.data.tile_size == (256, 192)
    assert config.weights.vae == "/models/vae" and config.ema_decay == 0.999
    assert config.stages["stage2"].learning_rate == 1e-4  # YAML 1.1 reads 1e-4 as text; float() takes it


def write_yaml(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


MINIMAL = {"stages": {"stage1": {"steps": 10, "batch_size": 2, "learning_rate": 1e-4}}}


def test_a_minimal_file_takes_the_defaults(tmp_path):
    config = load_config(write_yaml(tmp_path / "run.yaml", MINIMAL))
    assert config.stage("stage1") == StageConfig(steps=10, batch_size=2, learning_rate=1e-4)
    with pytest.raises(InvalidArgumentError, match="no stages.stage2 section"):
        config.stage("stage2")


@pytest.mark.parametrize("data, key", [
    ({"sed": 1}, "'sed'"),
    ({"optimizer": {"beta": [0.9, 0.99]}}, "'optimizer.beta'"),
    ({"stages": {"stage1": {**MINIMAL["stages"]["stage1"], "learing_rate": 1e-4}}}, "'stages.stage1.learing_rate'"),
    ({"stages": {"stage3": MINIMAL["stages"]["stage1"]}}, "'stages.stage3'"),
])
def test_an_unknown_key_is_an_error_that_names_it(tmp_path, data, key):
    path = write_yaml(tmp_path / "run.yaml", data)
    with pytest.raises(InvalidArgumentError, match=f"run.yaml: unknown key {key}"):
        load_config(path)


@pytest.mark.parametrize("data, message", [
    ({"seed": "twelve"}, "seed must be an integer, got 'twelve'"),
    ({"seed": True}, "seed must be an integer"),
    ({"gradient_checkpointing": 1}, "gradient_checkpointing must be true or false"),
    ({"objective": {"noise_offset": "a lot"}}, "objective.noise_offset must be a number"),
    ({"optimizer": {"betas": [0.9]}}, "optimizer.betas must be a list of 2 values"),
    ({"data": "64x64"}, "data must be a mapping"),
    ({"stages": {"stage1": {"steps": 1.5, "batch_size": 2, "learning_rate": 1e-4}}}, "stages.stage1.steps must be an "
                                                                                      "integer, got 1.5"),
    ({"stages": {"stage1": {"steps": 0, "batch_size": 2, "learning_rate": 1e-4}}}, "stages.stage1.steps must be "
                                                                                    "positive, got 0"),
    ({"stages": {"stage1": {"steps": 5, "learning_rate": 1e-4}}}, "stages.stage1 is missing stages.stage1.batch_size"),
    ({"mixed_precision": "fp8"}, "mixed_precision must be one of no, fp16, bf16, got 'fp8'"),
    ({"objective": {"prediction_type": "sample"}}, "objective.prediction_type must be one of"),
    ({"ema_decay": 1.5}, "ema_decay must be in \\(0, 1\\)"),
    ({"model": "sd21"}, "model must be one of"),
])
def test_a_wrong_type_or_value_is_an_error_that_names_the_key(tmp_path, data, message):
    path = write_yaml(tmp_path / "run.yaml", {**MINIMAL, **data})
    with pytest.raises(InvalidArgumentError, match=f"run.yaml: {message}"):
        load_config(path)


@pytest.mark.parametrize("override, message", [
    ("stages.stage1.steps", "must look like KEY=VALUE"),
    ("=3", "must look like KEY=VALUE"),
    ("seed.value=3", "'seed' is not a section"),
    ("stages.stage1.steps=[1", "is not a YAML value"),
    ("stages.stage1.steps=many", "stages.stage1.steps must be an integer, got 'many'"),
    ("stages.stage1.stepz=3", "unknown key 'stages.stage1.stepz'"),
    ("optimizer.betas=[0.9, 1.5]", r"optimizer.betas must be two numbers in \[0, 1\)"),
    ("optimizer.betas=[0.9]", r"optimizer.betas must be a list of 2 values"),
    ("optimizer.eps=0", "optimizer.eps must be a small positive number"),
    ("optimizer.eps=.inf", "optimizer.eps must be a small positive number"),
    ("optimizer.weight_decay=-0.1", r"optimizer.weight_decay must be in \[0, 1\)"),
    ("objective.noise_offset=.inf", "objective.noise_offset must be a finite number at least 0.0, got inf"),
    ("objective.snr_gamma=.inf", "objective.snr_gamma must be a finite number"),
    ("data.max_scale=.nan", "data.max_scale must be a finite number at least 1.0"),
])
def test_a_bad_override_is_an_error_that_names_it(override, message):
    with pytest.raises(InvalidArgumentError, match=message):
        load_config("sd15", overrides=[override])


def test_files_that_are_not_configs_are_input_file_errors(tmp_path):
    with pytest.raises(InvalidArgumentError, match="No training preset 'sd16'; choose one of .*sd15"):
        load_config("sd16")
    with pytest.raises(InputFileError, match="absent.yaml does not exist"):
        load_config(str(tmp_path / "absent.yaml"))
    (tmp_path / "broken.yaml").write_text("stages: [unclosed\n")
    with pytest.raises(InputFileError, match="broken.yaml is not valid YAML"):
        load_config(str(tmp_path / "broken.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(InputFileError, match="list.yaml must hold a YAML mapping"):
        load_config(str(tmp_path / "list.yaml"))
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(str(tmp_path / "empty.yaml")).stages == {}
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(InputFileError, match="binary.yaml is not a text file"):
        load_config(str(tmp_path / "binary.yaml"))
    (tmp_path / "deep.yaml").write_text("[" * 100_000)
    with pytest.raises(InputFileError, match="deep.yaml nests too deeply"):
        load_config(str(tmp_path / "deep.yaml"))
