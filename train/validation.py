"""Validation grids during training: the real pipeline on fixed held-out requests, one PNG per interval.

Each row is one request of the official ``test.py`` layout (the source in tiles 0-2, the target pose in tile 3) on
a person of the test split (the train split when there is none): source | target pose | ground truth | generated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from imagpose import scenarios
from imagpose.images import pil_to_tensor, tensor_to_pil
from imagpose.io import OutputFolder

from .config import TrainConfig
from .data import check_dataset


@dataclass
class ValidationRequest:
    request: object  # imagpose.canvas.PoseRequest
    source: torch.Tensor  # (3, H, W) in [0, 1]
    target_pose: torch.Tensor
    ground_truth: torch.Tensor


def validation_requests(data: str | Path, config: TrainConfig) -> list[ValidationRequest]:
    """``config.validation.num_requests`` fixed requests: view 0 of a held-out person posed as its view 1."""
    root = Path(data)
    split = "test" if (root / "test.json").is_file() else "train"
    report = check_dataset(root, split)
    tile = config.data.tile_size
    requests = []
    for number, views in enumerate(report.identities[: config.validation.num_requests]):
        source, target = views[0], views[1]
        request = scenarios.t2(source.image, source.pose, target.pose, grid=config.data.grid, tile_size=tile,
                               seed=config.seed + number, name=f"validation_{number}")

        def tensor(path, mode="RGB"):
            return pil_to_tensor(Image.open(path).convert(mode).resize((tile[1], tile[0]), Image.BICUBIC))

        pose = (tensor(target.pose) if target.pose.suffix != ".json"
                else pil_to_tensor(_rendered(target.pose, tile)))
        requests.append(ValidationRequest(request, tensor(source.image), pose, tensor(target.image)))
    return requests


def _rendered(path: Path, tile: tuple[int, int]) -> Image.Image:
    from imagpose.pose import keypoints_from_json, render_pose

    return render_pose(keypoints_from_json(path), tile[1], tile[0])


@torch.no_grad()
def write_validation_grid(out: Path, step: int, pipe, requests: list[ValidationRequest], config: TrainConfig,
                          sampling=None) -> Path:
    """Run ``pipe`` on ``requests`` and write ``out/validation/step-NNNNNN.png``; ``sampling`` (a SamplingConfig)
    replaces the config's validation steps and guidance (a distilled student samples with its own)."""
    settings = ({"sampling": sampling} if sampling is not None else
                {"num_inference_steps": config.validation.inference_steps,
                 "guidance_scale": config.validation.guidance_scale})
    results = pipe([r.request for r in requests], output_type="pt", progress=False, **settings).results
    rows = [torch.cat([r.source, r.target_pose, r.ground_truth, result.targets[0].float().cpu()], dim=-1)
            for r, result in zip(requests, results)]
    name = f"validation/step-{step:06d}.png"
    with OutputFolder(out) as folder:
        folder.save_image(name, tensor_to_pil(torch.cat(rows, dim=-2)[None])[0])
    return out / name
