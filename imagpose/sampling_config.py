"""SamplingConfig: every setting of one sampling run, with the paper's defaults, checked when it is made.

    from imagpose import DeepCacheConfig, SamplingConfig
    fast = SamplingConfig(sampler="unipc", num_inference_steps=8, deepcache=DeepCacheConfig(interval=2))
    pipe(request, sampling=fast)          # the same as pipe(request, sampler="unipc", num_inference_steps=8, ...)
    fast.replace(guidance_scale=3.0)      # another checked config
    SamplingConfig.from_dict(json.loads(json.dumps(fast.to_dict())))   # JSON: the wire format's "settings"

The pipeline, the SDK, the wire format, both servers, the command line, the demo and the benchmarks all carry one.
Valid values (NaN compares false with every bound, so each check is written to fail on NaN):

    num_inference_steps   integer in [1, num_train_timesteps]   (DDIM picks that many of the training timesteps;
                                                                 1000 in every IMAGPose schedule)
    guidance_scale        finite, >= 0                          (w <= 1 runs the conditional branch only)
    sampler               one of imagpose.samplers.SAMPLERS      (ddim: the official one; lcm, tcd: a distilled
                                                                 student's)
    eta                   finite, in [0, 1]; ddim and tcd only  (0 = deterministic; ddim: 1 = DDPM-like variance;
                                                                 tcd: gamma, 1 = lcm's full re-noising)
    guidance_interval     None (every step) or (start, stop)    (imagpose.guidance; needs guidance_scale > 1 and
                                                                 must cover one of the steps)
    deepcache             None (off) or DeepCacheConfig         (imagpose.deepcache)

What depends on the model (its scheduler's training timesteps, its UNet's skip branches) is checked by
:meth:`SamplingConfig.check_pipeline`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

from .errors import InvalidArgumentError
from .guidance import check_guidance_interval, guided_steps
from .samplers import FEW_STEP_SAMPLERS, check_sampler, max_steps
from .schedulers import OFFICIAL_DDIM_CONFIG

MAX_TRAIN_TIMESTEPS = OFFICIAL_DDIM_CONFIG["num_train_timesteps"]


@dataclass(frozen=True)
class DeepCacheConfig:
    """``interval``: a full UNet step every ``interval`` steps (1 = no caching); ``branch``: the skip branch cached
    (0 = the shallowest, fastest cached steps)."""

    interval: int
    branch: int = 0

    def __post_init__(self):
        for name, value, low in (("deepcache_interval", self.interval, 1), ("deepcache_branch", self.branch, 0)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise InvalidArgumentError(f"{name} must be an integer >= {low}, got {value!r}.")

    def check(self, unet) -> None:
        """Refuse a branch the UNet does not have."""
        if self.branch >= unet.num_skip_branches:
            raise InvalidArgumentError(
                f"deepcache_branch {self.branch} is beyond this UNet's skip branches 0..{unet.num_skip_branches - 1} "
                "(0 = the shallowest, fastest cached step); choose one of those.")


@dataclass(frozen=True)
class SamplingConfig:
    """The sampling settings of a pipeline call (see the module docstring for their valid values).

    Args:
        num_inference_steps: denoising steps (the paper 20; the official script 30).
        guidance_scale: w in ``u + w (c - u)``; <= 1 turns classifier-free guidance off.
        sampler: "ddim" (official), "dpmsolver++", "unipc", or "lcm" / "tcd" (a distilled student's few-step
            samplers; :mod:`imagpose.samplers`), on the same schedule.
        eta: DDIM eta (0 = deterministic), or TCD's gamma (0 = deterministic).
        guidance_interval: ``(start, stop)``, fractions of the steps (0 = the first, noisiest): guidance only on
            steps ``int(start * N) <= i < int(stop * N)`` (:mod:`imagpose.guidance`); None guides every step.
        deepcache: :class:`DeepCacheConfig` (:mod:`imagpose.deepcache`); None runs the whole UNet every step.
    """

    num_inference_steps: int = 20
    guidance_scale: float = 2.0
    sampler: str = "ddim"
    eta: float = 0.0
    guidance_interval: tuple[float, float] | None = None
    deepcache: DeepCacheConfig | None = None

    def __post_init__(self):
        steps = self.num_inference_steps
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
            raise InvalidArgumentError(f"num_inference_steps must be an integer, got {steps!r}.")
        _check_steps(steps, MAX_TRAIN_TIMESTEPS)
        if not _real(self.guidance_scale):
            raise InvalidArgumentError(f"guidance_scale must be a number, got {self.guidance_scale!r}.")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise InvalidArgumentError(f"guidance_scale must be a finite number >= 0 (values <= 1 turn classifier-free "
                                       f"guidance off; the paper uses 2.0), got {self.guidance_scale!r}.")
        if not _real(self.eta) or not (math.isfinite(self.eta) and 0 <= self.eta <= 1):
            raise InvalidArgumentError(f"eta must be a finite number in [0, 1] (0 = deterministic DDIM), got "
                                       f"{self.eta!r}.")
        check_sampler(self.sampler, self.eta)
        interval = check_guidance_interval(self.guidance_interval)
        guided_steps(steps, self.guidance_scale, interval)  # an interval without guidance, or covering no step
        if self.deepcache is not None and not isinstance(self.deepcache, DeepCacheConfig):
            raise InvalidArgumentError(f"deepcache must be a DeepCacheConfig(interval, branch) or None, got "
                                       f"{self.deepcache!r}.")
        # one representation per setting, so equal settings compare (and group) equal
        object.__setattr__(self, "num_inference_steps", int(steps))
        object.__setattr__(self, "guidance_scale", float(self.guidance_scale))
        object.__setattr__(self, "eta", float(self.eta))
        object.__setattr__(self, "guidance_interval", interval)

    def replace(self, **changes) -> SamplingConfig:
        """A copy with ``changes`` (field names), checked as a new config is."""
        return dataclasses.replace(self, **changes)

    def with_call_arguments(self, *, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                            sampler: str | None = None, eta: float | None = None,
                            guidance_interval: tuple[float, float] | None = None,
                            deepcache_interval: int | None = None, deepcache_branch: int | None = None
                            ) -> SamplingConfig:
        """This config with the pipeline call's keyword arguments that were given (not None) in its place;
        ``deepcache_interval`` and ``deepcache_branch`` make its :class:`DeepCacheConfig`."""
        changes = {name: value for name, value in (
            ("num_inference_steps", num_inference_steps), ("guidance_scale", guidance_scale), ("sampler", sampler),
            ("eta", eta), ("guidance_interval", guidance_interval)) if value is not None}
        if deepcache_interval is not None or deepcache_branch is not None:
            current = self.deepcache
            interval = deepcache_interval if deepcache_interval is not None else current and current.interval
            branch = deepcache_branch if deepcache_branch is not None else (current.branch if current else 0)
            if interval is None and branch != 0:
                raise InvalidArgumentError(f"deepcache_branch {branch!r} applies with deepcache_interval, which is "
                                           "not set; pass deepcache_interval (e.g. 3) or drop deepcache_branch.")
            changes["deepcache"] = None if interval is None else DeepCacheConfig(interval, branch)
        return self.replace(**changes) if changes else self

    def check_pipeline(self, pipe) -> SamplingConfig:
        """Refuse what ``pipe``'s models cannot run: more steps than its scheduler's training timesteps, a DeepCache
        branch its UNet does not have. Returns this config."""
        if self.sampler in FEW_STEP_SAMPLERS:
            limit = max_steps(self.sampler, pipe.scheduler.config)
            if self.num_inference_steps > limit:
                raise InvalidArgumentError(
                    f"The {self.sampler} sampler takes at most {limit} steps on this model (the teacher's solver "
                    f"steps it was distilled on), got {self.num_inference_steps}; a distilled student samples in "
                    "1-8 steps.")
        _check_steps(self.num_inference_steps, pipe.scheduler.config.num_train_timesteps)
        if self.deepcache is not None:
            self.deepcache.check(pipe.unet)
        return self

    def to_dict(self) -> dict:
        """JSON-ready: the interval as a list, DeepCache as ``{"interval", "branch"}`` or None."""
        data = dataclasses.asdict(self)
        data["guidance_interval"] = None if self.guidance_interval is None else list(self.guidance_interval)
        return data

    @classmethod
    def from_dict(cls, data) -> SamplingConfig:
        """The config of :meth:`to_dict`'s form; missing keys take the defaults, unknown keys are refused."""
        data = _known_keys(data, cls, "sampling settings")
        if data.get("deepcache") is not None:
            data["deepcache"] = DeepCacheConfig(**_known_keys(data["deepcache"], DeepCacheConfig, "deepcache"))
        return cls(**data)


# A pipeline folder's sampling defaults (optional; the paper's when absent): {"defaults": SamplingConfig.to_dict(),
# "distillation": {...}} where a distilled few-step student records how it was made
SAMPLING_FILE = "sampling.json"


def read_sampling_file(folder) -> tuple[SamplingConfig, dict | None]:
    """(default sampling, distillation record or None) of a pipeline folder's ``sampling.json``; the paper's
    defaults when the folder has none."""
    from pathlib import Path

    from .errors import InputFileError
    from .io import read_json_file

    path = Path(folder) / SAMPLING_FILE
    if not path.is_file():
        return SamplingConfig(), None
    fix = "save the pipeline again (IMAGPosePipeline.save_pretrained) or delete the file for the paper's defaults"
    data = read_json_file(path, fix)  # an object, or an InputFileError naming the file
    if not isinstance(data.get("defaults"), dict):
        raise InputFileError(f"{path} must hold {{\"defaults\": {{sampling settings}}}}; {fix}.")
    try:
        return SamplingConfig.from_dict(data["defaults"]), data.get("distillation")
    except InvalidArgumentError as exc:
        raise InputFileError(f"{path}: {exc} ({fix})") from exc


def sampling_file_contents(defaults: SamplingConfig, distillation: dict | None) -> dict | None:
    """What a pipeline folder's ``sampling.json`` holds (:func:`read_sampling_file` reads it back), or None when the
    folder needs none (the paper's defaults, not a student)."""
    if defaults == SamplingConfig() and distillation is None:
        return None
    return {"defaults": defaults.to_dict(), "distillation": distillation}


def merged_settings(defaults: SamplingConfig, settings: dict | None) -> SamplingConfig:
    """``defaults`` with the fields a partial settings dict (:meth:`SamplingConfig.to_dict` keys) gives."""
    if settings is None:
        return defaults
    return SamplingConfig.from_dict({**defaults.to_dict(), **_known_keys(settings, SamplingConfig,
                                                                         "sampling settings")})


def _check_steps(steps: int, num_train_timesteps: int) -> None:
    if not 1 <= steps <= num_train_timesteps:
        raise InvalidArgumentError(f"num_inference_steps must be in [1, {num_train_timesteps}] (the scheduler's "
                                   f"training timesteps), got {steps}.")


def _known_keys(data, config_class, what: str) -> dict:
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"{what} must be an object, got {type(data).__name__}.")
    known = [field.name for field in dataclasses.fields(config_class)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InvalidArgumentError(f"{what} has unknown keys {unknown}; known: {known}.")
    return dict(data)


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
