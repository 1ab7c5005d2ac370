"""The pipeline the orchestrator model runs: its configs, without its weights.

The networks run in the repository's other models, so the orchestrator needs only what ``IMAGPosePipeline.__call__``
reads from its modules: configs (geometry, CFG, token counts), ``unet.dtype`` and the parameter sizes the memory
check adds up. Those all exist on modules built on the meta device, which allocate no memory: the orchestrator
holds the scheduler and the canvases, not the model (an SD1.5 pipeline would otherwise cost 4 GiB per instance).
"""

from __future__ import annotations

from pathlib import Path

import torch

from imagpose.errors import InputFileError
from imagpose.io import read_json_file
from imagpose.pipeline import IMAGPosePipeline

CONFIG_FILES = {"unet": "config.json", "vae": "config.json", "image_encoder": "config.json",
                "flc_tokenizer": "config.json", "pose_guider": "config.json", "scheduler": "scheduler_config.json"}


class ConfigOnlyPipeline(IMAGPosePipeline):
    """An :class:`~imagpose.pipeline.IMAGPosePipeline` whose networks are meta-device modules (configs only): call
    it with a ``backend`` that runs the networks elsewhere. Its tensors (canvases, latents) live on the CPU."""

    @property
    def device(self) -> torch.device:  # also _execution_device (no offload hooks): meta modules hold no tensors
        return torch.device("cpu")


def write_pipeline_configs(pipe: IMAGPosePipeline, folder: Path) -> None:
    """``model_index.json``, every component's config (the layout of ``save_pretrained``, without weights) and the
    pipeline's sampling defaults (``sampling.json``, a distilled student's)."""
    from imagpose.io import write_json
    from imagpose.sampling_config import SAMPLING_FILE, sampling_file_contents

    pipe.save_config(folder)
    for name in ("unet", "vae", "flc_tokenizer", "pose_guider", "scheduler"):
        getattr(pipe, name).save_config(folder / name)
    pipe.image_encoder.config.save_pretrained(folder / "image_encoder")
    contents = sampling_file_contents(pipe.default_sampling, pipe.distillation)
    if contents is not None:
        write_json(folder / SAMPLING_FILE, contents)


def load_config_only_pipeline(folder: str | Path) -> ConfigOnlyPipeline:
    """A :class:`ConfigOnlyPipeline` from a folder of configs (``write_pipeline_configs`` or a pipeline folder)."""
    from transformers import Dinov2Config

    from imagpose.autoencoders import autoencoder_class, folder_class_name
    from imagpose.models import FLCTokenizer, IMAGPoseImageEncoder, IMAGPoseUNet, PoseGuider
    from imagpose.samplers import load_scheduler
    from imagpose.sampling_config import read_sampling_file

    folder = Path(folder)
    fix = "rebuild the repository with `imagpose export triton`"
    read_json_file(folder / "model_index.json", fix)
    for name, config in CONFIG_FILES.items():
        read_json_file(folder / name / config, fix)
    try:
        with torch.device("meta"):
            modules = {name: cls.from_config(cls.load_config(folder / name)).eval() for name, cls in (
                ("unet", IMAGPoseUNet), ("vae", autoencoder_class(folder_class_name(folder / "vae"))),
                ("flc_tokenizer", FLCTokenizer),
                ("pose_guider", PoseGuider))}
            modules["image_encoder"] = IMAGPoseImageEncoder(Dinov2Config.from_pretrained(folder / "image_encoder"))
    except (OSError, TypeError, ValueError) as exc:  # the loaders' reports of configs they cannot use
        raise InputFileError(f"The pipeline configs in {folder} cannot be used ({exc}); {fix}.") from exc
    # the scheduler's tables are read by the sampler on the CPU: built outside the meta context
    scheduler = load_scheduler(folder / "scheduler")
    pipe = ConfigOnlyPipeline(scheduler=scheduler, **modules)
    pipe.default_sampling, pipe.distillation = read_sampling_file(folder)
    return pipe
