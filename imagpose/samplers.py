"""Samplers by name: the official DDIM (default) and diffusers' multistep solvers on the same noise schedule.

Every sampler is built from the pipeline's scheduler config (v-prediction, zero-terminal-SNR betas, trailing
spacing), so it samples the model's own schedule:

    ddim         IMAGPoseDDIMScheduler: the official sampler (eta selects DDIM's stochasticity)
    dpmsolver++  diffusers DPMSolverMultistepScheduler, DPM-Solver++ 2M, last step to sigma 0
    unipc        diffusers UniPCMultistepScheduler (UniPC-bh2 predictor-corrector), last step to sigma 0
    lcm          diffusers LCMScheduler: the few-step sampler of a consistency-distilled student
                 (``imagpose train distill``); each step predicts x_0 through the consistency boundary conditions
                 and re-noises it to the next of the student's steps (fresh noise from the request's generator),
                 on the skipping-step schedule it was distilled on (``original_inference_steps``)
    tcd          diffusers TCDScheduler: trajectory-consistency sampling of the same student; eta is TCD's gamma,
                 the stochasticity of each step (0 = deterministic, DDIM-like jumps along the student's
                 trajectory; 1 = lcm's full re-noising)

The multistep solvers keep the last model outputs between steps; the pipeline builds one per call, so threads
sharing a pipeline never share a solver's state. On a zero-terminal-SNR schedule diffusers clamps their last
alpha_bar to 2**-24 (their sigma would be infinite at 0).

The diffusers idiom ``pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)`` selects a
sampler too (:func:`sampler_of`): the pipeline samples with it whenever a call names no other.
"""

from __future__ import annotations

from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, LCMScheduler, TCDScheduler, UniPCMultistepScheduler

from .errors import InvalidArgumentError
from .schedulers import IMAGPoseDDIMScheduler

# name: (scheduler class, the config values every run of it uses)
SAMPLER_CLASSES = {
    "ddim": (IMAGPoseDDIMScheduler, {}),
    "dpmsolver++": (DPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver++", solver_order=2,
                                                      final_sigmas_type="zero")),
    "unipc": (UniPCMultistepScheduler, dict(final_sigmas_type="zero")),
    "lcm": (LCMScheduler, {}),
    "tcd": (TCDScheduler, {}),
}
# samplers whose step draws noise scaled by eta (DDIM's eta, TCD's gamma)
SAMPLERS_WITH_ETA = ("ddim", "tcd")
# few-step samplers of a distilled student, on the skipping-step schedule it was distilled on
FEW_STEP_SAMPLERS = ("lcm", "tcd")
SAMPLERS = tuple(SAMPLER_CLASSES)


def check_sampler(name: str, eta: float = 0.0) -> None:
    if name not in SAMPLERS:
        raise InvalidArgumentError(f"Unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}.")
    if name not in SAMPLERS_WITH_ETA and eta != 0:
        raise InvalidArgumentError(f"eta applies to the {' and '.join(SAMPLERS_WITH_ETA)} samplers only; {name} "
                                   "takes none: pass eta=0.")


def make_sampler(name: str, config):
    """A fresh scheduler of sampler ``name`` on the schedule of ``config`` (the pipeline's scheduler config)."""
    check_sampler(name)
    scheduler_class, options = SAMPLER_CLASSES[name]
    return scheduler_class.from_config(config, **options)


def load_scheduler(folder):
    """The scheduler of a pipeline folder's ``scheduler/``, of the class its config names: ``LCMScheduler`` (a
    distilled student), else the official DDIM (``IMAGPoseDDIMScheduler``)."""
    from pathlib import Path

    from .io import read_json_file

    config = read_json_file(Path(folder) / "scheduler_config.json", "save the pipeline again")
    scheduler_class = LCMScheduler if config.get("_class_name") == LCMScheduler.__name__ else IMAGPoseDDIMScheduler
    return scheduler_class.from_pretrained(folder)


def sampler_of(scheduler) -> str:
    """The sampler a scheduler assigned to ``pipe.scheduler`` selects; InvalidArgumentError naming the supported
    ones for any other (diffusers' plain ``DDIMScheduler`` is ``ddim``: it differs only where eta > 0 breaks it)."""
    for name, (scheduler_class, options) in SAMPLER_CLASSES.items():
        if isinstance(scheduler, DDIMScheduler if name == "ddim" else scheduler_class):
            different = {key: scheduler.config.get(key) for key, value in options.items()
                         if scheduler.config.get(key) != value}
            if different:
                raise InvalidArgumentError(
                    f"The {name} sampler runs {type(scheduler).__name__} with {options}; this scheduler has "
                    f"{different}. Build it with {type(scheduler).__name__}.from_config(pipe.scheduler.config).")
            return name
    supported = ", ".join(f"{scheduler_class.__name__} ({name!r})"
                          for name, (scheduler_class, _) in SAMPLER_CLASSES.items())
    raise InvalidArgumentError(
        f"IMAGPosePipeline cannot sample with {type(scheduler).__name__}; it samples with {supported}, e.g. "
        "pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config), or sampler=... per call.")


def max_steps(name: str, config) -> int:
    """The most sampling steps sampler ``name`` takes on a pipeline whose scheduler config is ``config``: the
    training timesteps, or for lcm and tcd the steps of the schedule the student was distilled on."""
    if name in FEW_STEP_SAMPLERS:
        return int(config.get("original_inference_steps") or LCMScheduler().config.original_inference_steps)
    return int(config["num_train_timesteps"])


def step_arguments(scheduler, eta: float, generator) -> dict:
    """Keyword arguments of ``scheduler.step`` beyond (prediction, t, latents): DDIM's eta, and the noise generator
    of the samplers whose step draws noise (DDIM and TCD with eta > 0, LCM between steps)."""
    if isinstance(scheduler, (IMAGPoseDDIMScheduler, TCDScheduler)):
        return {"eta": eta, "generator": generator}
    if isinstance(scheduler, LCMScheduler):
        return {"generator": generator}
    return {}
