"""train/accelerate/*.yaml: accelerate's own classes read every file, `accelerate launch` accepts it for the trainer's
command line, the FSDP wrap classes exist in our model, and the 2-process CPU file really starts two gloo processes."""

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils.dataclasses import DistributedType, get_module_class_from_name

from imagpose.train.stages import build_trainable

CONFIGS = Path(str(resources.files("imagpose.train") / "accelerate"))
NAMES = ("cpu_2proc.yaml", "deepspeed_zero2.yaml", "fsdp.yaml", "multi_gpu.yaml")
TRAINER = ["-m", "imagpose.cli", "train", "run"]  # what follows `accelerate launch --config_file FILE`


def launch_args(name: str):
    """``accelerate launch --config_file FILE -m imagpose.cli train run`` as accelerate validates it (no launch)."""
    parsed = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), *TRAINER])
    args, _, _ = _validate_launch_command(parsed)
    return args


def test_the_shipped_configs_are_these():
    assert tuple(sorted(p.name for p in CONFIGS.glob("*.yaml"))) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_config_reads_with_accelerates_classes_and_launches_the_trainer_module(name):
    config = ClusterConfig.from_yaml_file(CONFIGS / name)  # unknown top-level keys would raise here
    args = launch_args(name)
    assert args.module and args.training_script == "imagpose.cli" and args.training_script_args == ["train", "run"]
    assert args.num_processes == config.num_processes >= 2 and args.num_machines == 1
    dests = {action.dest for action in launch_command_parser()._actions}
    for section in (config.deepspeed_config, config.fsdp_config):  # accelerate copies these keys onto its arguments
        unknown = sorted(key for key in section if key not in dests)
        assert not unknown, f"{name}: keys accelerate launch does not know: {unknown}"


def test_deepspeed_zero2_is_the_official_setup():
    """run_train_*.sh + zero_stage2_config.json: 8 GPUs, ZeRO-2, fp16, gradient clipping 1.0, no offload."""
    config = ClusterConfig.from_yaml_file(CONFIGS / "deepspeed_zero2.yaml")
    assert config.distributed_type == DistributedType.DEEPSPEED and config.mixed_precision == "fp16"
    assert config.num_processes == 8 and not config.use_cpu
    args = launch_args("deepspeed_zero2.yaml")
    assert args.use_deepspeed and args.zero_stage == 2 and args.gradient_clipping == 1.0
    assert args.gradient_accumulation_steps == 1
    assert (args.offload_optimizer_device, args.offload_param_device) == ("none", "none")


def test_fsdp_wraps_classes_of_our_model():
    config = ClusterConfig.from_yaml_file(CONFIGS / "fsdp.yaml")
    fsdp = config.fsdp_config
    assert config.distributed_type == DistributedType.FSDP and launch_args("fsdp.yaml").use_fsdp
    assert fsdp["fsdp_sharding_strategy"] in ("FULL_SHARD", "SHARD_GRAD_OP")
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP" and fsdp["fsdp_use_orig_params"]
    model = build_trainable("end2end", "tiny")  # the stage with every module class
    for class_name in fsdp["fsdp_transformer_layer_cls_to_wrap"].split(","):
        assert get_module_class_from_name(model, class_name) is not None, class_name  # what accelerate resolves


def test_multi_gpu_is_ddp_on_gpus():
    config = ClusterConfig.from_yaml_file(CONFIGS / "multi_gpu.yaml")
    assert config.distributed_type == DistributedType.MULTI_GPU and not config.use_cpu
    assert launch_args("multi_gpu.yaml").multi_gpu


PROBE = """
import json, sys
import torch.distributed as dist
from accelerate import Accelerator
accelerator = Accelerator()  # as the training loop makes it
report = [accelerator.process_index, accelerator.num_processes, accelerator.distributed_type.value, dist.get_backend(),
          accelerator.device.type]
with open(f"rank{accelerator.process_index}.json", "w") as handle:  # a file per rank: the launcher owns stdout
    json.dump(report, handle)
"""


def test_cpu_2proc_starts_two_gloo_processes_on_the_cpu(tmp_path):
    """A real launch (seconds), as the file's comment says to run it: 2 ranks on the CPU with the gloo backend."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(CONFIGS / "cpu_2proc.yaml"), str(script)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "ACCELERATE_USE_CPU": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    reports = sorted(json.loads(path.read_text()) for path in tmp_path.glob("rank*.json"))
    expected = [[0, 2, "MULTI_CPU", "gloo", "cpu"], [1, 2, "MULTI_CPU", "gloo", "cpu"]]
    assert reports == expected, done.stdout + done.stderr
