"""Evaluate a trained pipeline on held-out people, against an untrained model and copying the source.

    from imagpose.train.evaluation import evaluate, render_figure
    evaluation = evaluate("runs/tiny/pipeline", "data/", out="eval/")   # summary.json, scores.csv, strips/, figure.png
    print(evaluation.table())

Items: for every identity of the test split (people never seen in training), ``pairs_per_identity`` pairs of a
source view and a different target view, drawn with ``random.Random(seed)``. Each generator makes the target tile:
    model            the pipeline, T2 layout as the official test.py (source in tiles 0-2, target pose in tile 3),
                     at the dataset's image size, DDIM ``steps`` steps, guidance ``guidance_scale``, seed
                     ``seed + item``
    untrained        the same architecture with random weights (``imagpose.presets.randomize_weights``, seed 0: for
                     a tiny model exactly ``build_pipeline("tiny")``), same call
    copy_source      the source tile itself (what a model that ignores the pose would score)
    model_zero_dino  with ``zero_dino=True``: the model with its DINO tokens zeroed, i.e. conditioned on the FLC
                     tokens alone (measures what the frozen random image encoder contributes)
    student_<N>      with ``student=``: a few-step student distilled from the model (``imagpose train distill``)
                     with its own sampler at N steps (``student_steps``: 4, 2, 1), seeds as the model's
The model samples with its folder's defaults (the paper's DDIM 20, guidance 2), or ``steps`` / ``guidance_scale``.
Every pipeline generator is timed (``seconds_per_image``: wall time over all items, one process, side by side).
Measures against the ground-truth target tile: SSIM, PSNR, pose IoU and colour error (:mod:`imagpose.measures`),
with the dataset's exact person mask (``mask/``) and the identity's background (``background/``).
The segmentation is validated on the ground-truth images themselves (their derived mask against the exact one)
and on their round trip through the model's VAE (the best a generated image can score): both in the summary.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from imagpose import scenarios
from imagpose.errors import InputFileError, InvalidArgumentError
from imagpose.images import POSE_BACKGROUND, load_image, pil_to_tensor, tensor_to_pil
from imagpose.io import MissingInputFileError, OutputFolder, read_json
from imagpose.measures import (
    DEFAULT_KERNEL,
    DEFAULT_THRESHOLD,
    LOWER_IS_BETTER,
    MEASURES,
    foreground_mask,
    mask_iou,
    scores,
)
from imagpose.pose import keypoints_from_json, render_pose
from imagpose.runtime import RuntimeWrapper
from imagpose.sampling_config import SamplingConfig

from .data import companion as data_companion

GENERATORS = ("model", "untrained", "copy_source")
ZERO_DINO = "model_zero_dino"
STUDENT_STEPS = (4, 2, 1)
DATA_FIX = "create a dataset with `imagpose train make-data --out DIR`, or pass its folder"


@dataclass
class EvalItem:
    """One held-out pair; images are (3, H, W) in [0, 1], ``mask`` and ``background`` belong to the target."""

    name: str
    identity: str
    source_path: str
    target_path: str
    source: torch.Tensor
    target: torch.Tensor
    target_pose: torch.Tensor
    mask: torch.Tensor  # (H, W) bool, exact person mask of the target
    background: torch.Tensor
    generated: dict[str, torch.Tensor] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class Evaluation:
    items: list[EvalItem]
    summary: dict

    def table(self) -> str:
        return format_table(self.summary)


# ----------------------------------------------------------------------------- measures
def score(generated: torch.Tensor, item: EvalItem, threshold: float = DEFAULT_THRESHOLD,
          kernel: int = DEFAULT_KERNEL) -> dict[str, float]:
    """Every measure (:mod:`imagpose.measures`) of ``generated`` against the item's ground-truth target."""
    return scores(generated, item.target, item.mask, item.background, threshold, kernel)


# ----------------------------------------------------------------------------- items
def is_annotation(value) -> bool:
    """The official annotation format: a list of identities, each a list of image paths."""
    return isinstance(value, list) and all(isinstance(group, list) and all(isinstance(path, str) for path in group)
                                           for group in value)


def read_test_split(data_root: Path) -> list[list[str]]:
    if not data_root.is_dir():
        raise MissingInputFileError(f"Dataset folder {data_root} does not exist; {DATA_FIX}.")
    annotation = read_json(data_root / "test.json", DATA_FIX)
    if not is_annotation(annotation):
        raise InputFileError(f"{data_root / 'test.json'} is not a list of identities (lists of image paths); "
                             f"{DATA_FIX}.")
    return annotation


def companion(data_root: Path, image_path: str, folder: str, suffix: str) -> Path:
    """The official path rule (:func:`imagpose.train.data.companion`) under ``data_root``; a path outside any
    ``image`` folder is an error naming the test split."""
    relative = data_companion(image_path, folder, suffix)
    if relative is None:
        raise InputFileError(f"{image_path} (in {data_root / 'test.json'}) is not inside an image/ folder, so its "
                             f"pose and mask cannot be found (the rule image/X/k.png -> {folder}/X/k{suffix}); "
                             f"{DATA_FIX}.")
    return data_root / relative


def pose_input(data_root: Path, image_path: str) -> Path:
    """The pose of a view: its rendered pose image (``dwpose/``), else its keypoints (``keypoints/``)."""
    for candidate in (companion(data_root, image_path, "dwpose", ".png"),
                      companion(data_root, image_path, "keypoints", ".json")):
        if candidate.is_file():
            return candidate
    raise MissingInputFileError(f"{data_root / image_path} has no pose: neither "
                                f"{companion(data_root, image_path, 'dwpose', '.png')} nor "
                                f"{companion(data_root, image_path, 'keypoints', '.json')} exists; {DATA_FIX}.")


def pose_image(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) pose in [0, 1] at ``size`` (H, W), as the canvas shows it."""
    if path.suffix == ".json":
        image = render_pose(keypoints_from_json(path), size[1], size[0])
    else:
        image = load_image(path, "pose image", background=POSE_BACKGROUND).resize((size[1], size[0]), Image.BILINEAR)
    return pil_to_tensor(image)


def load_items(data_root: Path, pairs_per_identity: int, seed: int, max_items: int | None) -> list[EvalItem]:
    """The held-out pairs: per test identity, ``pairs_per_identity`` (source, different target) view pairs."""
    rng = random.Random(seed)
    items: list[EvalItem] = []
    for group in read_test_split(data_root):
        views = sorted(set(group), key=group.index)
        if len(views) < 2:
            continue
        pairs = [(s, t) for s in views for t in views if s != t]
        for source_path, target_path in rng.sample(pairs, min(pairs_per_identity, len(pairs))):
            identity = Path(target_path).parent.name  # image/<identity>/<k>.png; background/<identity>.png
            target = pil_to_tensor(load_image(data_root / target_path, "ground-truth image"))
            size = tuple(target.shape[-2:])
            source = load_image(data_root / source_path, "source image").resize((size[1], size[0]), Image.BILINEAR)
            mask_path = companion(data_root, target_path, "mask", ".png")
            mask = torch.from_numpy(np.asarray(_read_image(mask_path, "mask").convert("L")) > 127)
            background = load_image(_existing(data_root / "background" / f"{identity}.png"), "background image")
            if mask.shape != size or background.size != (size[1], size[0]):
                raise InputFileError(f"{mask_path} or the background of {identity} is not {size[1]}x{size[0]} like "
                                     f"{data_root / target_path}; {DATA_FIX}.")
            if not mask.any():
                raise InputFileError(f"{mask_path} marks no person pixel (255 = person); {DATA_FIX}.")
            items.append(EvalItem(
                name=f"{len(items):04d}_{identity}_{Path(source_path).stem}_to_{Path(target_path).stem}",
                identity=identity, source_path=source_path, target_path=target_path, source=pil_to_tensor(source),
                target=target, target_pose=pose_image(pose_input(data_root, target_path), size), mask=mask,
                background=pil_to_tensor(background)))
            if max_items is not None and len(items) == max_items:
                return items
    if not items:
        raise InputFileError(f"{data_root / 'test.json'} has no identity with two different views; {DATA_FIX}.")
    return items


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise MissingInputFileError(f"{path} is missing; {DATA_FIX}.")
    return path


def _read_image(path: Path, what: str) -> Image.Image:
    try:
        with Image.open(_existing(path)) as image:
            image.load()
            return image
    except OSError as exc:
        raise InputFileError(f"{what} {path} is not a readable image ({exc}); {DATA_FIX}.") from exc


# ----------------------------------------------------------------------------- generators
class ZeroDinoRuntime(RuntimeWrapper):
    """A runtime with the DINO tokens zeroed: the context holds the FLC tokens alone."""

    def __init__(self, inner):
        super().__init__(inner, f"{inner.name}-zero-dino")

    def call(self, method: str, *args):
        output = super().call(method, *args)
        return torch.zeros_like(output) if method == "image_encoder" else output


def random_pipeline_like(pipe, seed: int = 0):
    """A pipeline of ``pipe``'s architecture with random weights drawn as ``imagpose.presets.build_components``
    draws them (same order, same generator): for a tiny model, the weights of ``build_pipeline("tiny", seed)``."""
    from imagpose.models import IMAGPoseImageEncoder
    from imagpose.pipeline import IMAGPosePipeline
    from imagpose.presets import randomize_weights

    modules = {name: type(getattr(pipe, name)).from_config(getattr(pipe, name).config)
               for name in ("unet", "pose_guider", "flc_tokenizer", "vae")}
    modules["image_encoder"] = IMAGPoseImageEncoder(pipe.image_encoder.config)
    generator = torch.Generator().manual_seed(seed)
    for name in ("unet", "pose_guider", "flc_tokenizer", "vae", "image_encoder"):
        randomize_weights(modules[name], generator)
        modules[name].to(pipe.device).eval()
        if pipe.unet.dtype != torch.float32:  # as build_components: a no-op cast makes diffusers warn
            modules[name].to(dtype=pipe.unet.dtype)
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    return IMAGPosePipeline(scheduler=scheduler, **modules)


def generate(pipe, items: list[EvalItem], data_root: Path, sampling: SamplingConfig, seed: int, runtime=None,
             batch_size: int = 8, progress: bool = False) -> list[torch.Tensor]:
    """The target tile of every item: T2 requests at the items' tile size, seed ``seed + index``, sampled with
    ``sampling``."""
    requests = []
    for index, item in enumerate(items):
        size = tuple(item.target.shape[-2:])
        requests.append(scenarios.t2(data_root / item.source_path, pose_input(data_root, item.source_path),
                                     pose_input(data_root, item.target_path), tile_size=size, seed=seed + index,
                                     name=item.name))
    tiles = []
    for start in range(0, len(requests), batch_size):
        results = pipe(requests[start:start + batch_size], sampling=sampling, output_type="pt", progress=progress,
                       runtime=runtime).results
        tiles += [result.targets[0] for result in results]
    return tiles


@torch.no_grad()
def vae_round_trip(pipe, image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [0, 1] through the pipeline's VAE (as the pipeline encodes), as a generated image is decoded."""
    runtime = pipe.torch_runtime()
    latents = runtime.vae_encode((image[None] * 2 - 1).to(pipe.vae.device, pipe.vae.dtype))
    return runtime.vae_decode(latents)[0].float().cpu()


# ----------------------------------------------------------------------------- summary
def summarize(items: list[EvalItem], generators: list[str]) -> dict:
    summary: dict = {}
    deviations = {}
    for name in generators:
        values = {m: np.array([item.scores[name][m] for item in items]) for m in MEASURES}
        summary[name] = {m: round(float(v.mean()), 4) for m, v in values.items()}
        deviations[name] = {m: round(float(v.std()), 4) for m, v in values.items()}
    summary["std"] = deviations
    summary["model_beats_copy_source"] = {m: round(float(np.mean([_beats(item.scores["model"][m],
                                                                         item.scores["copy_source"][m], m)
                                                                  for item in items])), 4) for m in MEASURES}
    if ZERO_DINO in generators:
        summary["zero_dino_difference"] = {m: round(summary[ZERO_DINO][m] - summary["model"][m], 4)
                                           for m in MEASURES}
    return summary


def _beats(value: float, baseline: float, measure: str) -> bool:
    return value < baseline if measure in LOWER_IS_BETTER else value > baseline


def format_table(summary: dict) -> str:
    """The summary as a text table: mean +- std per generator, and how often the model beats copy_source."""
    generators = [name for name in (*GENERATORS, ZERO_DINO, *(summary.get("students") or ())) if name in summary]
    labels = [m + (" (lower better)" if m in LOWER_IS_BETTER else "") for m in MEASURES]
    width = max(map(len, labels)) + 2

    def row(name: str, cells) -> str:
        return f"{name:<18}" + "".join(cell.rjust(width) for cell in cells)

    header = row("generator", labels)
    lines = [header, "-" * len(header)]
    for name in generators:
        lines.append(row(name, (f"{summary[name][m]:.4f} +- {summary['std'][name][m]:.4f}" for m in MEASURES)))
    lines.append(row("model beats copy", (f"{summary['model_beats_copy_source'][m]:.0%} of items" for m in MEASURES)))
    counts, check = summary["counts"], summary["segmentation_check"]
    lines.append(f"{counts['items']} items from {counts['identities']} held-out identities; segmentation check: "
                 f"IoU {check['ground_truth_iou']:.3f} on the ground truth, {check['vae_round_trip_iou']:.3f} after "
                 "the model's VAE")
    return "\n".join(lines)


def scores_csv(items: list[EvalItem], generators: list[str]) -> str:
    """One row per item and generator."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["item", "identity", "source", "target", "generator", *MEASURES])
    for item in items:
        for name in generators:
            writer.writerow([item.name, item.identity, item.source_path, item.target_path, name,
                             *(f"{item.scores[name][m]:.6g}" for m in MEASURES)])
    return buffer.getvalue()


def strip(tiles: list[torch.Tensor]) -> Image.Image:
    """Equal (3, H, W) tiles in [0, 1] side by side."""
    return tensor_to_pil(torch.cat(tiles, dim=-1)[None])[0]


def render_figure(evaluation: Evaluation, count: int = 12, generators: tuple[str, ...] = ("model",)
                  ) -> Image.Image:
    """A figure for docs: ``count`` items as rows of source | target pose | each generator | ground truth, with a
    header naming the columns."""
    items = evaluation.items[:count]
    rows = torch.cat([torch.cat([i.source, i.target_pose, *(i.generated[g] for g in generators), i.target], dim=-1)
                      for i in items], dim=-2)
    body = tensor_to_pil(rows[None])[0]
    tile_width = items[0].target.shape[-1]
    header = 14
    figure = Image.new("RGB", (body.width, body.height + header), (255, 255, 255))
    figure.paste(body, (0, header))
    draw = ImageDraw.Draw(figure)
    with_students = any(g.startswith("student_") for g in generators)
    labels = ("source", "target pose", *(_column_label(g, with_students) for g in generators), "ground truth")
    for column, label in enumerate(labels):
        draw.text((column * tile_width + 2, 1), label, fill=(0, 0, 0))
    return figure


def _column_label(generator: str, with_students: bool) -> str:
    if generator.startswith("student_"):
        return f"{generator.split('_')[1]}-step student"
    return "teacher" if generator == "model" and with_students else generator.replace("_", " ")


# ----------------------------------------------------------------------------- evaluate
def check_settings(pairs_per_identity: int, max_items: int | None, threshold: float, kernel: int) -> None:
    if pairs_per_identity < 1:
        raise InvalidArgumentError(f"pairs_per_identity must be at least 1, got {pairs_per_identity}.")
    if max_items is not None and max_items < 1:
        raise InvalidArgumentError(f"max_items must be at least 1 (or None for every item), got {max_items}.")
    if not (math.isfinite(threshold) and 0 < threshold < 1):
        raise InvalidArgumentError(f"threshold must be in (0, 1) (a colour difference in [0, 1] RGB), got "
                                   f"{threshold}.")
    if kernel < 1 or kernel % 2 == 0:
        raise InvalidArgumentError(f"kernel must be a positive odd number of pixels, got {kernel}.")


def evaluate(model_dir: str | Path, data_root: str | Path, out: str | Path | None = None, *,
             steps: int | None = None, guidance_scale: float | None = None,
             seed: int = 0, pairs_per_identity: int = 1, max_items: int | None = None,
             zero_dino: bool = False, student: str | Path | None = None,
             student_steps: tuple[int, ...] = STUDENT_STEPS, threshold: float = DEFAULT_THRESHOLD,
             kernel: int = DEFAULT_KERNEL, device: str | torch.device = "cpu", batch_size: int = 8,
             progress: bool = False) -> Evaluation:
    """Score ``model_dir`` (a pipeline folder) on the test split of ``data_root`` (see the module docstring).

    ``out``: a folder that receives summary.json, scores.csv (every item and generator), strips/<item>.png
    (source | ground truth | generated) and figure.png (:func:`render_figure`: with a student, teacher | each
    student | ground truth); it is checked before the model loads and written only when the evaluation succeeds.
    """
    import time

    from imagpose.pipeline import IMAGPosePipeline

    check_settings(pairs_per_identity, max_items, threshold, kernel)
    model_dir, data_root = Path(model_dir), Path(data_root)
    if not model_dir.is_dir():
        raise MissingInputFileError(f"Model folder {model_dir} does not exist; pass a pipeline folder (the `pipeline` "
                                    "folder of `imagpose train run`, or IMAGPosePipeline.save_pretrained()).")
    with OutputFolder(out) if out is not None else contextlib.nullcontext() as folder:
        items = load_items(data_root, pairs_per_identity, seed, max_items)
        pipe = IMAGPosePipeline.from_pretrained(model_dir).to(device)
        sampling = pipe.sampling_config(num_inference_steps=steps, guidance_scale=guidance_scale)
        pipes = {"model": (pipe, None, sampling), "untrained": (random_pipeline_like(pipe), None, sampling)}
        if zero_dino:
            pipes[ZERO_DINO] = (pipe, ZeroDinoRuntime(pipe.torch_runtime()), sampling)
        students = []
        if student is not None:
            student_pipe = IMAGPosePipeline.from_pretrained(student).to(device)
            for count in student_steps:
                students.append(f"student_{count}")
                pipes[students[-1]] = (student_pipe, None, student_pipe.sampling_config(num_inference_steps=count))
        seconds = {}
        for name, (generator_pipe, runtime, generator_sampling) in pipes.items():
            started = time.perf_counter()
            tiles = generate(generator_pipe, items, data_root, generator_sampling, seed, runtime, batch_size,
                             progress)
            seconds[name] = round((time.perf_counter() - started) / len(items), 4)
            for item, tile in zip(items, tiles):
                item.generated[name] = tile
        for item in items:
            item.generated["copy_source"] = item.source
        generators = [*GENERATORS, *([ZERO_DINO] if zero_dino else []), *students]
        for item in items:
            item.scores = {name: score(item.generated[name], item, threshold, kernel) for name in generators}
        summary = summarize(items, generators)
        ground_truth = [mask_iou(foreground_mask(i.target, i.background, threshold, kernel), i.mask) for i in items]
        round_trip = [mask_iou(foreground_mask(vae_round_trip(pipe, i.target), i.background, threshold, kernel),
                               i.mask) for i in items]
        summary["segmentation_check"] = {"ground_truth_iou": round(float(np.mean(ground_truth)), 4),
                                         "ground_truth_iou_min": round(float(np.min(ground_truth)), 4),
                                         "vae_round_trip_iou": round(float(np.mean(round_trip)), 4)}
        summary["counts"] = {"items": len(items), "identities": len({i.identity for i in items})}
        summary["seconds_per_image"] = seconds
        summary["settings"] = {"model": str(model_dir), "data": str(data_root), "layout": "t2",
                               "tile_size": list(items[0].target.shape[-2:]),
                               "steps": sampling.num_inference_steps, "guidance_scale": sampling.guidance_scale,
                               "sampling": sampling.to_dict(), "seed": seed, "pairs_per_identity": pairs_per_identity,
                               "threshold": threshold, "kernel": kernel}
        if student is not None:
            summary["settings"]["student"] = str(student)
            summary["students"] = {name: {"sampling": pipes[name][2].to_dict(),
                                          "speedup": round(seconds["model"] / seconds[name], 3),
                                          "drop": {m: round(summary["model"][m] - summary[name][m], 4)
                                                   for m in MEASURES}} for name in students}
        evaluation = Evaluation(items=items, summary=summary)
        if folder is not None:
            folder.write_json("summary.json", summary)
            folder.path("scores.csv").write_text(scores_csv(items, generators), encoding="utf-8")
            for item in items:
                folder.save_image(f"strips/{item.name}.png", strip([item.source, item.target,
                                                                     item.generated["model"]]))
            folder.save_image("figure.png", render_figure(evaluation, generators=("model", *students)))
    return evaluation
