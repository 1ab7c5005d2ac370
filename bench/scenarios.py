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

from .baselines.base import Setting

METHODS = ("imagpose", "imagpose_star", "pidm", "cfld", "pocold", "pcdms")
COMMON_OUTPUT = (256, 192)
COMMON_STEPS = 20


@dataclass(frozen=True)
class Scenario:
    method: str
    setting: str = "as_released"  # or "common_policy"
    size: str = "full"  # or "reduced"
    batch: int = 1
    backend: str = "eager"  # IMAGPose only: eager | onnxruntime | tensorrt | triton
    loop_limit: int | None = None  # run this many steps of each loop and extrapolate (None: all)

    @property
    def label(self) -> str:
        backend = "" if self.backend == "eager" else f"[{self.backend}]"
        return f"{self.method}{backend}/{self.setting}/{self.size}"


def build_method(name: str, size: str, backend=None):
    """Instantiate a method (on the current default device: use ``torch.device("meta")`` for counts)."""
    if name in ("imagpose", "imagpose_star"):
        from .imagpose_method import IMAGPoseMethod

        return IMAGPoseMethod(size, stars=name == "imagpose_star", backend=backend)
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
    raise ValueError(f"Unknown method {name!r}; choose from {', '.join(METHODS)}.")


def resolve_setting(released: Setting, setting: str, size: str, device_type: str) -> Setting:
    """The concrete setting a scenario runs (resolution halved for reduced-size runs)."""
    if setting == "as_released":
        out = released
    elif setting == "common_policy":
        out = replace(released, name="common_policy", resolution=COMMON_OUTPUT, steps=COMMON_STEPS,
                      precision="fp16", candidates=1)
    else:
        raise ValueError(f"Unknown setting {setting!r}; use as_released or common_policy.")
    if device_type != "cuda":
        out = replace(out, precision="fp32")  # fp16 convolutions are not a CPU path
    if size == "reduced":
        out = replace(out, resolution=tuple(max(64, r // 2) for r in out.resolution))
    return out


def quick_cpu_suite() -> list[Scenario]:
    """Every method, both settings, reduced size, 2 timed steps per loop (extrapolated): minutes on 2 cores."""
    return [Scenario(m, s, "reduced", loop_limit=2) for s in ("as_released", "common_policy") for m in METHODS]


def full_gpu_suite(backends=("eager",)) -> list[Scenario]:
    """Full-size methods, both settings, every step timed; IMAGPose also on each fast-path backend."""
    suite = [Scenario(m, s, "full") for s in ("as_released", "common_policy") for m in METHODS]
    for backend in backends:
        if backend != "eager":
            suite += [Scenario(m, "as_released", "full", backend=backend) for m in ("imagpose", "imagpose_star")]
    return suite
