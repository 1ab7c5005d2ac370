"""Speed against quality of the fast-sampling options (``imagpose bench quality``).

Every setting generates the same held-out people (T2 layout, one noise seed per item) with the code users run
(``IMAGPosePipeline.__call__`` with the setting's :class:`~imagpose.sampling_config.SamplingConfig`, on the
setting's runtime), in one process,
side by side with the default (the paper's setting: DDIM, 20 steps, CFG w = 2 on every step). For each setting:

- seconds per image (wall time of the whole generation over every item, divided by the item count; the default
  is timed first and again last, and speedups use the mean of the two);
- the exact full-size FLOPs per image: the whole pipeline call (conditions, every UNet call, decode) counted on
  the meta device at the full-size (SD1.5) architecture, 512x512 tiles, so the GPU gain can be projected;
- quality against the default's output (SSIM, PSNR) and against the ground truth (the trainer's evaluation
  measures: SSIM, PSNR, pose IoU, colour error).

A setting is on the Pareto front when no other setting is both faster and closer to the default's output (SSIM
against it). ``best_at`` picks, for each speedup target, the setting closest to the default's output among those at
least that much faster. Fidelity to the faithful setting, not the ground-truth scores, ranks them: on a small model
the ground-truth scores move with blur (fewer steps often score higher), so they are the budget a setting must keep
(:data:`QUALITY_BUDGET`), not its rank.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio
from tqdm.auto import tqdm

from imagpose.errors import InvalidArgumentError
from imagpose.measures import MEASURES, image_scores
from imagpose.pipeline import IMAGPosePipeline
from imagpose.sampling_config import DeepCacheConfig, SamplingConfig, read_sampling_file
from imagpose.train.evaluation import EvalItem, generate, load_items, score

SPEEDUP_TARGETS = (2.0, 3.0, 5.0)
QUALITY_BUDGET = {"ssim": 0.01, "pose_iou": 0.02}  # largest drop against the default still called "same quality"
UNETS = ("torch", "onnxruntime", "onnxruntime-int8")
FULL_SIZE_TILE = (512, 512)


@dataclass(frozen=True)
class QualitySetting:
    """One point of the sweep: the sampling of a fast-sampling option (or a combination), the runtime of its
    networks ("onnxruntime-int8": the UNet quantized) and its model: None for the bench's model, or another pipeline
    folder of the same architecture (a distilled student of it)."""

    name: str
    sampling: SamplingConfig = SamplingConfig()
    unet: str = "torch"
    model: str | None = None

    def __post_init__(self):
        if not isinstance(self.sampling, SamplingConfig):
            raise InvalidArgumentError(f"Setting {self.name!r}: sampling must be a SamplingConfig, got "
                                       f"{self.sampling!r}.")
        if self.model is not None and self.unet != "torch":
            raise InvalidArgumentError(f"Setting {self.name!r}: another model runs on the torch runtime only.")
        if self.unet not in UNETS:
            raise InvalidArgumentError(f"Setting {self.name!r}: unet {self.unet!r} is unknown; choose from "
                                       f"{', '.join(UNETS)}.")

    def as_dict(self) -> dict:
        return {"name": self.name, "sampling": self.sampling.to_dict(), "unet": self.unet, "model": self.model}


DEFAULT = QualitySetting("default (DDIM 20, CFG every step)")


def _fast(sampler: str, steps: int, **sampling) -> SamplingConfig:
    return SamplingConfig(sampler=sampler, num_inference_steps=steps, **sampling)


STUDENT_STEPS = (4, 2, 1)


def student_settings(student: str | Path) -> list[QualitySetting]:
    """The rows of a distilled few-step student (``imagpose train distill``) of the bench's model: its own sampler
    at each of :data:`STUDENT_STEPS`, one UNet batch per step, and the bench's model sampled the same way."""
    pipe_defaults, _ = read_sampling_file(student)
    rows = [QualitySetting(f"student {pipe_defaults.sampler} {steps}",
                           pipe_defaults.replace(num_inference_steps=steps), model=str(student))
            for steps in STUDENT_STEPS]
    # the control: the undistilled model with the student's sampling, so the rows show what distillation adds
    control = QualitySetting(f"undistilled {pipe_defaults.sampler} {STUDENT_STEPS[0]}",
                             pipe_defaults.replace(num_inference_steps=STUDENT_STEPS[0]))
    return [*rows, control]


# the samplers swept on the model at 4-20 steps: the official DDIM, the multistep solvers, and lcm on the undistilled
# model (a control for the student rows); tcd is a student's sampler with nothing to add there
SWEPT_SAMPLERS = ("ddim", "dpmsolver++", "unipc", "lcm")


def sweep(kind: str = "full", student: str | Path | None = None) -> list[QualitySetting]:
    """The settings of a run: the default first; "quick" is a handful for a smoke run; ``student``: a distilled
    student's rows (:func:`student_settings`) at the end."""
    extra = student_settings(student) if student is not None else []
    half_guided = (0.0, 0.5)
    if kind == "quick":
        return [DEFAULT, QualitySetting("unipc 8", _fast("unipc", 8)),
                QualitySetting("ddim 20 deepcache 3/0", SamplingConfig(deepcache=DeepCacheConfig(3))),
                QualitySetting("ddim 20 guidance [0.0, 0.5]", SamplingConfig(guidance_interval=half_guided)), *extra]
    if kind != "full":
        raise InvalidArgumentError(f"Unknown sweep {kind!r}; choose full or quick.")
    settings = [DEFAULT, QualitySetting("ddim 20 no guidance", SamplingConfig(guidance_scale=1.0))]
    for sampler in SWEPT_SAMPLERS:
        for steps in (4, 6, 8, 10, 12) + ((20,) if sampler != "ddim" else ()):
            settings.append(QualitySetting(f"{sampler} {steps}", _fast(sampler, steps)))
    for interval in (half_guided, (0.0, 0.3), (0.2, 0.8)):
        settings.append(QualitySetting(f"ddim 20 guidance [{interval[0]}, {interval[1]}]",
                                       SamplingConfig(guidance_interval=interval)))
    for cache_interval in (2, 3, 5):
        for branch in (0, 1):
            settings.append(QualitySetting(f"ddim 20 deepcache {cache_interval}/{branch}",
                                           SamplingConfig(deepcache=DeepCacheConfig(cache_interval, branch))))
    for sampler in ("dpmsolver++", "unipc"):
        for steps in (6, 8, 10):
            settings.append(QualitySetting(f"{sampler} {steps} guidance [0.0, 0.5]",
                                           _fast(sampler, steps, guidance_interval=half_guided)))
            settings.append(QualitySetting(f"{sampler} {steps} deepcache 2/0",
                                           _fast(sampler, steps, deepcache=DeepCacheConfig(2))))
        settings.append(QualitySetting(f"{sampler} 10 guidance [0.0, 0.5] deepcache 2/0",
                                       _fast(sampler, 10, guidance_interval=half_guided,
                                             deepcache=DeepCacheConfig(2))))
        settings.append(QualitySetting(f"{sampler} 4 deepcache 2/0", _fast(sampler, 4, deepcache=DeepCacheConfig(2))))
        settings.append(QualitySetting(f"{sampler} 6 deepcache 3/0", _fast(sampler, 6, deepcache=DeepCacheConfig(3))))
        settings.append(QualitySetting(f"{sampler} 8 deepcache 3/0", _fast(sampler, 8, deepcache=DeepCacheConfig(3))))
        settings.append(QualitySetting(f"{sampler} 6 guidance [0.0, 0.5] deepcache 2/0",
                                       _fast(sampler, 6, guidance_interval=half_guided,
                                             deepcache=DeepCacheConfig(2))))
    settings += [QualitySetting("ddim 20 onnxruntime fp32", unet="onnxruntime"),
                 QualitySetting("ddim 20 onnxruntime int8 unet", unet="onnxruntime-int8"),
                 QualitySetting("unipc 8 onnxruntime int8 unet", _fast("unipc", 8), unet="onnxruntime-int8")]
    return settings + extra


# ----------------------------------------------------------------------------------------------- measuring
def full_size_flops(setting: QualitySetting, preset: str = "sd15") -> float:
    """FLOPs of one T2 generation at the full-size architecture (``preset``) and 512x512 tiles, counted on the meta
    device (:mod:`imagpose.bench.meta_pipeline`): the whole pipeline call, as users run it with these arguments."""
    from imagpose import scenarios
    from imagpose.presets import build_components
    from imagpose.samples import sample
    from imagpose.schedulers import official_ddim_scheduler

    from .meta_pipeline import MetaNetworksPipeline, MetaRuntime
    from .meter import count_flops

    components = build_components(preset, meta=True)
    components["scheduler"] = official_ddim_scheduler()  # the sampler runs on the CPU: no meta tables
    pipe = MetaNetworksPipeline(**components)
    image, pose = sample("person_red_front")
    request = scenarios.t2(image, pose, sample("person_red_walking")[1], tile_size=FULL_SIZE_TILE, seed=0)
    return float(count_flops(pipe, request, sampling=setting.sampling, output_type="pt", progress=False,
                             runtime=MetaRuntime(pipe.torch_runtime())))


@dataclass
class SettingResult:
    setting: QualitySetting
    seconds_per_image: float
    flops_per_image: float
    vs_default: dict[str, float]  # ssim, psnr against the default's output (means)
    vs_ground_truth: dict[str, float]  # the trainer's measures (means)
    speedup: float = 1.0
    drop: dict[str, float] | None = None  # default minus this, for the ground-truth measures (positive = worse)
    flop_ratio: float = 1.0
    pareto: bool = False

    def as_dict(self) -> dict:
        data = asdict(self)
        data["setting"] = self.setting.as_dict()
        return data


def _generate(pipes: dict, items: list[EvalItem], data_root: Path, setting: QualitySetting, runtimes: dict,
              batch_size: int) -> tuple[list[torch.Tensor], float]:
    start = time.perf_counter()
    tiles = generate(pipes[setting.model], items, data_root, setting.sampling, seed=0,
                     runtime=runtimes.get(setting.unet), batch_size=batch_size)
    return tiles, time.perf_counter() - start


def _against(tiles: list[torch.Tensor], references: list[torch.Tensor]) -> dict[str, float]:
    ssim = [image_scores(tile, reference)["ssim"] for tile, reference in zip(tiles, references)]
    psnr = [min(float(peak_signal_noise_ratio(t[None].double(), r[None].double(), data_range=1.0)), 100.0)
            for t, r in zip(tiles, references)]
    return {"ssim": round(float(np.mean(ssim)), 4), "psnr": round(float(np.mean(psnr)), 3)}


def _ground_truth(tiles: list[torch.Tensor], items: list[EvalItem], threshold: float, kernel: int) -> dict:
    per_item = [score(tile, item, threshold, kernel) for tile, item in zip(tiles, items)]
    return {m: round(float(np.mean([s[m] for s in per_item])), 4) for m in MEASURES}


def prepare_runtimes(pipe, unets: set[str], work_dir: Path, tile_size: tuple[int, int], calibration_items: int = 4):
    """The runtimes the settings name: ONNX Runtime over an fp32 export of every network, and the same folder
    with the UNet quantized to INT8 (:mod:`imagpose.export.quantize`)."""
    runtimes: dict = {"torch": None}
    if not unets - {"torch"}:
        return runtimes
    from imagpose.export import ShapeBucket
    from imagpose.export.runtime import prepare_runtime

    bucket = ShapeBucket(1, *tile_size, 2, 2)
    if "onnxruntime" in unets:
        runtimes["onnxruntime"] = prepare_runtime("onnxruntime", pipe, work_dir / "fp32", bucket)
    if "onnxruntime-int8" in unets:
        from imagpose.export.quantize import quantized_runtime

        runtimes["onnxruntime-int8"] = quantized_runtime(pipe, work_dir / "int8", bucket, "int8",
                                                          calibration_requests=calibration_items)
    return runtimes


def run_quality_bench(model_dir: str | Path, data_root: str | Path, settings: list[QualitySetting],
                      work_dir: str | Path, max_items: int | None = 24, batch_size: int = 8,
                      threshold: float = 0.12, kernel: int = 3, progress: bool = True,
                      flop_preset: str = "sd15") -> dict:
    """Run every setting on the held-out items of ``data_root`` (test.json); see the module docstring."""
    if not settings or settings[0] != DEFAULT:
        settings = [DEFAULT, *[s for s in settings if s != DEFAULT]]
    data_root = Path(data_root)
    pipe = IMAGPosePipeline.from_pretrained(model_dir)
    pipes = {None: pipe, **{s.model: IMAGPosePipeline.from_pretrained(s.model) for s in settings if s.model}}
    items = load_items(data_root, 1, seed=0, max_items=max_items)
    tile_size = tuple(items[0].target.shape[-2:])
    runtimes = prepare_runtimes(pipe, {s.unet for s in settings}, Path(work_dir), tile_size)

    outputs: dict[QualitySetting, list[torch.Tensor]] = {}
    seconds: dict[QualitySetting, float] = {}
    with tqdm(total=len(settings) + 1, desc="settings", unit="setting", disable=not progress) as bar:
        for setting in settings:
            bar.set_postfix_str(setting.name)
            outputs[setting], seconds[setting] = _generate(pipes, items, data_root, setting, runtimes, batch_size)
            bar.update()
        _, default_again = _generate(pipes, items, data_root, DEFAULT, runtimes, batch_size)  # drift check
        bar.update()
    default_seconds = statistics.mean([seconds[DEFAULT], default_again])

    flops = {}
    for setting in settings:  # the count depends only on the loop's arguments, not on the runtime or weights
        key = replace(setting, name="", unet="torch", model=None)
        if key not in flops:
            flops[key] = full_size_flops(setting, flop_preset)
    results = []
    for setting in settings:
        tiles = outputs[setting]
        truth = _ground_truth(tiles, items, threshold, kernel)
        results.append(SettingResult(
            setting=setting, seconds_per_image=seconds[setting] / len(items),
            flops_per_image=flops[replace(setting, name="", unet="torch", model=None)],
            vs_default=_against(tiles, outputs[DEFAULT]), vs_ground_truth=truth))
    default = results[0]
    for result in results:
        if result.setting == DEFAULT:
            result.seconds_per_image = default_seconds / len(items)
    for result in results:
        result.speedup = round(default.seconds_per_image / result.seconds_per_image, 3)
        result.flop_ratio = round(default.flops_per_image / result.flops_per_image, 3)
        result.drop = {m: round(default.vs_ground_truth[m] - result.vs_ground_truth[m], 4) for m in MEASURES}
    mark_pareto(results)
    device = "cpu"
    from .harness import environment

    return {"environment": environment(device), "model": str(model_dir), "data": str(data_root),
            "items": len(items), "tile_size": list(tile_size), "batch_size": batch_size, "flop_preset": flop_preset,
            "default_seconds_runs": [round(seconds[DEFAULT] / len(items), 4), round(default_again / len(items), 4)],
            "quality_budget": QUALITY_BUDGET, "results": [r.as_dict() for r in results],
            "best_at": best_at(results), "within_budget": within_budget(results)}


def mark_pareto(results: list[SettingResult]) -> None:
    """Pareto front over (seconds per image: lower, SSIM against the default's output: higher)."""
    for result in results:
        result.pareto = not any(
            other.seconds_per_image <= result.seconds_per_image
            and other.vs_default["ssim"] >= result.vs_default["ssim"]
            and (other.seconds_per_image < result.seconds_per_image
                 or other.vs_default["ssim"] > result.vs_default["ssim"])
            for other in results)


def best_at(results: list[SettingResult]) -> dict[str, dict | None]:
    """For each speedup target, the setting closest to the default's output (SSIM) among those at least that fast
    whose ground-truth drops stay within :data:`QUALITY_BUDGET`."""
    best = {}
    for target in SPEEDUP_TARGETS:
        fast = [r for r in results if r.speedup >= target and _within(r)]
        pick = max(fast, key=lambda r: r.vs_default["ssim"]) if fast else None
        best[f"{target:g}x"] = None if pick is None else {"name": pick.setting.name, "speedup": pick.speedup,
                                                         "flop_ratio": pick.flop_ratio, "drop": pick.drop,
                                                         "vs_default": pick.vs_default}
    return best


def within_budget(results: list[SettingResult]) -> list[dict]:
    """Settings at least 3x faster whose ground-truth SSIM and pose IoU drop within :data:`QUALITY_BUDGET`."""
    return [{"name": r.setting.name, "speedup": r.speedup, "flop_ratio": r.flop_ratio, "drop": r.drop,
             "ssim_vs_default": r.vs_default["ssim"]} for r in results if r.speedup >= 3.0 and _within(r)]


def _within(result: SettingResult) -> bool:
    return all(result.drop[m] <= bound for m, bound in QUALITY_BUDGET.items())
