"""Benchmark scenarios as data: which method, under which setting, at which size, on which backend.

Settings:
    as_released     each method's own resolution, steps, CFG evaluations and batching, precision
    common_policy   the same output size (256x192: the paper's 256x176 padded to the 64-multiple IMAGPose
                    needs), 20 steps for every method, fp16 on GPU (fp32 on CPU), SDPA attention, one
                    candidate per kept image (PCDMs as released generates 4 and keeps the best)
Sizes: "full" (the released architectures; used for exact FLOP counts and GPU timing) and "reduced"
(each method's ~0.4x-width CPU variant at half its released resolution, for ``--quick`` CPU runs).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from imagpose.errors import InvalidArgumentError
from imagpose.pretrained import trained_tile_size

from .baselines.base import Setting

METHODS = ("imagpose", "imagpose_star", "pidm", "cfld", "pocold", "pcdms")
SETTINGS = ("as_released", "common_policy")
# IMAGPose's fast paths: eager PyTorch (the reference), the exported runtimes, and PyTorch with the fused Triton CVA
# kernels ("triton-cva": "triton" alone names the Triton Inference Server)
FAST_PATHS = ("eager", "onnxruntime", "tensorrt", "triton-cva")
COMMON_OUTPUT = (256, 192)
COMMON_STEPS = 20


@dataclass(frozen=True)
class Scenario:
    method: str
    setting: str = "as_released"  # or "common_policy"
    size: str = "full"  # or "reduced" (IMAGPose also "tiny": the test preset)
    batch: int = 1
    backend: str = "eager"  # IMAGPose only: eager | onnxruntime | tensorrt | triton
    loop_limit: int | None = None  # run this many steps of each loop and extrapolate (None: all)
    model: str | None = None  # IMAGPose only: a pipeline folder (None: the size's random-weight preset)

    @property
    def label(self) -> str:
        backend = "" if self.backend == "eager" else f"[{self.backend}]"
        return f"{self.method}{backend}/{self.setting}/{self.size}"


def check_choices(what: str, values, choices) -> list[str]:
    """``values`` if each is one of ``choices``, else an :class:`InvalidArgumentError` naming the valid ones."""
    values = list(values)
    unknown = [value for value in values if value not in choices]
    if unknown or not values:
        raise InvalidArgumentError(f"Unknown {what} {', '.join(map(repr, unknown)) or '(none given)'}; choose from "
                                   f"{', '.join(choices)}.")
    return values


def build_method(name: str, size: str, model: str | None = None):
    """Instantiate a method (on the current default device: use ``torch.device("meta")`` for counts); ``model``:
    IMAGPose's pipeline folder (the baselines always have random weights)."""
    check_choices("method", [name], METHODS)
    if name in ("imagpose", "imagpose_star"):
        from .imagpose_method import IMAGPoseMethod

        return IMAGPoseMethod(size, stars=name == "imagpose_star", model_dir=model)
    if name == "pidm":
        from .baselines.pidm import PIDM

        return PIDM(size)
    if name == "cfld":
        from .baselines.cfld import CFLD

        return CFLD(size)
    if name == "pocold":
        from .baselines.pocold import PoCoLD

        return PoCoLD(size)
    if name == "pcdms":
        from .baselines.pcdms import PCDMs

        return PCDMs(size)


def resolve_setting(released: Setting, setting: str, size: str, device_type: str, model: str | None = None
                    ) -> Setting:
    """The concrete setting a scenario runs (resolution halved for reduced-size runs). A ``model`` folder that
    records its training tile size runs at those tiles under every setting and size: elsewhere its output says
    nothing about the model."""
    check_choices("setting", [setting], SETTINGS)
    out = released
    if setting == "common_policy":
        out = replace(released, name="common_policy", resolution=COMMON_OUTPUT, steps=COMMON_STEPS,
                      precision="fp16", candidates=1)
    if device_type != "cuda":
        out = replace(out, precision="fp32")  # fp16 convolutions are not a CPU path
    if size == "reduced":
        out = replace(out, resolution=tuple(max(64, r // 2) for r in out.resolution))
    tile = trained_tile_size(model) if model else None
    return replace(out, resolution=tile) if tile else out


def build_suite(methods=METHODS, settings=SETTINGS, backends=("eager",), quick: bool = False,
                model: str | None = None) -> list[Scenario]:
    """Every method under every setting on eager PyTorch, and IMAGPose(*) as released on each other backend.

    ``quick``: reduced sizes, 2 steps per loop (extrapolated), minutes on 2 CPU cores; else the full sizes with
    every step timed. ``model``: the pipeline folder IMAGPose(*) runs instead of the random-weight preset.
    """
    size, loop_limit = ("reduced", 2) if quick else ("full", None)

    def of(method: str) -> str | None:
        return model if method.startswith("imagpose") else None

    suite = [Scenario(m, s, size, loop_limit=loop_limit, model=of(m)) for s in settings for m in methods]
    suite += [Scenario(m, "as_released", size, backend=b, loop_limit=loop_limit, model=of(m))
              for b in backends if b != "eager" for m in methods if m.startswith("imagpose")]
    return suite
