"""The demo: every user scenario of the paper on the shipped sample people, in batched pipeline calls.

The command-line demo runs the shipped trained model (``imagpose.pretrained``) at the tile height it was trained
on; with the random-weight ``tiny`` preset it shows that every path runs end to end (canvas layout, padding, grids,
batching), not image quality.
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from . import scenarios
from .canvas import PoseRequest, View
from .images import tensor_to_pil
from .io import OutputFolder
from .samples import sample
from .sampling_config import SamplingConfig
from .timing import Stopwatch


@dataclass
class DemoScenario:
    name: str
    description: str
    request: PoseRequest


def demo_scenarios(seed: int = 0, tile_height: int | None = None) -> list[DemoScenario]:
    """The scenarios; ``tile_height``: run the ones at the samples' own size at this tile height instead (the width
    keeps the samples' aspect ratio), for a model trained at that scale."""
    def src(name):
        return sample(name)  # (image, keypoint json)

    def pose(name):
        return sample(name)[1]

    red, blue = "person_red_", "person_blue_"
    items = [
        ("t1", "T1: one source, the target pose replicated into the 3 other tiles",
         scenarios.t1(*src(red + "front"), pose(red + "walking"))),
        ("t2", "T2 (official test.py): the source replicated into tiles 0-2, one target in tile 3",
         scenarios.t2(*src(red + "front"), pose(red + "arms_up"))),
        ("t3", "T3: three different sources, one target",
         scenarios.t3([src(red + "front"), src(red + "hands_on_hips"), src(red + "side")], pose(red + "walking"))),
        ("imagpose_star", "IMAGPose*: one source, three different targets in one pass",
         scenarios.imagpose_star(*src(blue + "front"), [pose(blue + "arms_up"), pose(blue + "walking"),
                                                        pose(blue + "side")])),
        ("mixed", "mixed: sources and targets interleaved (S T / S T)",
         scenarios.mixed([View.source(*src(blue + "front")), View.target(pose(blue + "arms_up")),
                          View.source(*src(blue + "side")), View.target(pose(blue + "walking"))])),
        ("grid_2x3", "a 2x3 grid: one source, five targets (beyond the paper's 4-view limit)",
         scenarios.imagpose_star(*src(red + "front"), [pose(n) for n in (red + "arms_up", red + "walking",
                                 red + "hands_on_hips", red + "side", blue + "walking")], grid=(2, 3))),
        ("tile_128x128", "T2 at a 128x128 tile (inputs resized; a multiple of 64, so no padding)",
         scenarios.t2(*src(blue + "walking"), pose(blue + "front"), tile_size=(128, 128))),
    ]
    out = []
    for i, (name, description, request) in enumerate(items):
        request.seed, request.name = seed + i, name
        if tile_height is not None and request.tile_size is None:
            width, height = Image.open(request.views[request.source_indices[0]].image).size
            request.tile_size = (tile_height, round(tile_height * width / height))
        out.append(DemoScenario(name, description, request))
    return out


def run_demo(pipe, out_dir: str | Path | OutputFolder, sampling: SamplingConfig | None = None, seed: int = 0,
             model_label: str = "tiny (random weights)", progress: bool = True, runtime_label: str = "torch",
             tile_height: int | None = None) -> dict:
    """Run every demo scenario with ``sampling`` (default: the pipeline's) and write
    ``out_dir/<scenario>/{target_tile*.png, canvas.png, inputs.png}`` and ``out_dir/summary.json``, beside what
    ``out_dir`` already holds. ``out_dir`` is a folder, or an open :class:`~imagpose.io.OutputFolder` (the caller
    checked it early and commits it). Returns the summary."""
    sampling = pipe.sampling_config(sampling)
    opened = isinstance(out_dir, OutputFolder)
    with contextlib.nullcontext(out_dir) if opened else OutputFolder(out_dir) as folder:
        items = demo_scenarios(seed, tile_height)
        active = pipe.default_runtime
        supported = active.supported_grids() if hasattr(active, "supported_grids") else set()
        skipped = [i.name for i in items if supported and tuple(i.request.grid) not in supported]
        items = [i for i in items if i.name not in skipped]
        requests = [item.request for item in items]
        canvases = [pipe.build_canvas(r) for r in requests]
        with Stopwatch(pipe.device) as watch:
            output = pipe(requests, canvases=canvases, sampling=sampling, progress=progress)
        seconds = watch.seconds
        summary = {
            "model": model_label,
            "sampling": sampling.to_dict(),
            "seconds_total": round(seconds, 3),
            "device": str(pipe.device),
            "runtime": runtime_label,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "note": "random weights produce noise-like images: the demo checks the paths, not image quality"
            if "random" in model_label else "",
            "scenarios": [],
            "skipped": {name: f"the {runtime_label} UNet was exported for the grid(s) {sorted(supported)}"
                        for name in skipped},
        }
        sheet = []
        for item, canvas, result in zip(items, canvases, output.results):
            files = []
            for index, image in zip(result.target_indices, result.targets):
                folder.save_image(f"{item.name}/target_tile{index}.png", image)
                files.append(f"{item.name}/target_tile{index}.png")
            folder.save_image(f"{item.name}/canvas.png", result.canvas)
            inputs = tensor_to_pil(torch.stack([canvas.person, canvas.pose]))
            strip = Image.new("RGB", (inputs[0].width * 2, inputs[0].height))
            strip.paste(inputs[0], (0, 0))
            strip.paste(inputs[1], (inputs[0].width, 0))
            folder.save_image(f"{item.name}/inputs.png", strip)
            sheet.append((f"{item.name}: {item.description}", strip, result.canvas))
            layout = canvas.layout
            summary["scenarios"].append({
                "name": item.name,
                "description": item.description,
                "grid": [layout.rows, layout.cols],
                "tile_size": [layout.tile_height, layout.tile_width],
                "padded_tile_size": list(layout.padded_tile),
                "roles": list(canvas.roles),
                "seed": result.seed,
                "targets": files,
                "canvas": f"{item.name}/canvas.png",
                "inputs": f"{item.name}/inputs.png (masked person canvas | pose canvas)",
            })
        folder.save_image("overview.png", overview_sheet(sheet))
        summary["overview"] = "overview.png (per scenario: masked person canvas | pose canvas | generated canvas)"
        folder.write_json("summary.json", summary)
    return summary


def overview_sheet(rows: list[tuple[str, Image.Image, Image.Image]]) -> Image.Image:
    """One image to look at: per scenario a caption over its inputs (masked person | pose) and the generated
    canvas, on white."""
    from PIL import ImageDraw

    caption, gap = 14, 6
    width = max(inputs.width + gap + canvas.width for _, inputs, canvas in rows)
    height = sum(caption + max(inputs.height, canvas.height) + gap for _, inputs, canvas in rows)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    top = 0
    for text, inputs, canvas in rows:
        draw.text((2, top + 1), text, fill=(0, 0, 0))
        top += caption
        sheet.paste(inputs, (0, top))
        sheet.paste(canvas.convert("RGB"), (inputs.width + gap, top))
        top += max(inputs.height, canvas.height) + gap
    return sheet
