"""Samplers by name: the official DDIM (default) and diffusers' multistep solvers on the same noise schedule.

Every sampler is built from the pipeline's scheduler config (v-prediction, zero-terminal-SNR betas, trailing
spacing), so it samples the model's own schedule:

    ddim         IMAGPoseDDIMScheduler: the official sampler (eta selects DDIM's stochasticity)
    dpmsolver++  diffusers DPMSolverMultistepScheduler, DPM-Solver++ 2M, last step to sigma 0
    unipc        diffusers UniPCMultistepScheduler (UniPC-bh2 predictor-corrector), last step to sigma 0

The multistep solvers keep the last model outputs between steps; the pipeline builds one per call, so threads
sharing a pipeline never share a solver's state. On a zero-terminal-SNR schedule diffusers clamps their last
alpha_bar to 2**-24 (their sigma would be infinite at 0).
"""

from __future__ import annotations

from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from .errors import InvalidArgumentError
from .schedulers import IMAGPoseDDIMScheduler

SAMPLERS = ("ddim", "dpmsolver++", "unipc")


def check_sampler(name: str, eta: float = 0.0) -> None:
    if name not in SAMPLERS:
        raise InvalidArgumentError(f"Unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}.")
    if name != "ddim" and eta != 0:
        raise InvalidArgumentError(f"eta applies to the ddim sampler only; {name} is deterministic: pass eta=0.")


def make_sampler(name: str, config):
    """A fresh scheduler of sampler ``name`` on the schedule of ``config`` (the pipeline's scheduler config)."""
    check_sampler(name)
    if name == "ddim":
        return IMAGPoseDDIMScheduler.from_config(config)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                       final_sigmas_type="zero")
    return UniPCMultistepScheduler.from_config(config, final_sigmas_type="zero")


def step_arguments(scheduler, eta: float, generator) -> dict:
    """Keyword arguments of ``scheduler.step`` beyond (prediction, t, latents): DDIM's eta and noise generator."""
    if isinstance(scheduler, IMAGPoseDDIMScheduler):
        return {"eta": eta, "generator": generator}
    return {}
