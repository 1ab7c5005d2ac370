"""DeepCache (Ma et al., CVPR 2024): reuse the UNet's deep features between adjacent denoising steps.

    pipe(requests, deepcache_interval=3, deepcache_branch=0)
    pipe(requests, sampling=SamplingConfig(deepcache=DeepCacheConfig(interval=3, branch=0)))   # the same

Adjacent steps change the deep (low-resolution) features of the UNet little. A *full* step runs the whole UNet and
caches the deep feature of one skip branch; the next ``interval - 1`` *cached* steps run only the shallow path of
that branch and take the cached feature where the deep path would have produced it.

Branches follow the DeepCache reference code (``cache_branch_id``): branch k is the k-th skip connection counted
from the shallowest (0 = conv_in's output, then every down layer and downsampler in order;
``unet.num_skip_branches`` of them: 6 in the tiny preset, 12 in SD1.5). On a cached step of branch k the UNet runs
conv_in, the down layers that produce skips 1..k, the up layers from the one consuming skip k to the last, and
conv_out. The cached feature is the input of that up layer.

IMAGPose puts a cross-view attention (CVA) module at the end of every UNet layer. On a cached step the CVA modules
of the recomputed layers run (the views keep exchanging information at the shallow levels); the CVA modules of the
mid block and of every deeper layer do not: their output of the last full step is inside the cached feature.

Guidance: the cache keeps the rows of each CFG half apart (``uncond``, ``cond``). A step whose halves are all in
the cache and whose full step is fewer than ``interval`` steps back is a cached step; any other step is a full step.
So with a guidance interval, a guided step after an unguided full step (no ``uncond`` rows cached) is a full step,
while an unguided step after a guided full step reuses its ``cond`` rows. ``interval=1`` makes every step a full
step: the same predictions as without DeepCache, bit for bit.
"""

from __future__ import annotations

import torch

from .errors import InvalidArgumentError
from .runtime import DEEPCACHE_METHODS, DeepCacheRuntime
from .sampling_config import DeepCacheConfig

HALVES = {True: ("uncond", "cond"), False: ("cond",)}  # guided step -> its rows, in the CFG batch order


def check_deepcache_runtime(runtime, branch: int) -> None:
    """Refuse, before any network runs, a runtime that cannot run DeepCache steps of skip branch ``branch``."""
    missing = [method for method in DEEPCACHE_METHODS.values() if not callable(getattr(runtime, method, None))]
    if missing or not callable(getattr(runtime, "deepcache_branches", None)):
        raise InvalidArgumentError(f"The {runtime.name} runtime cannot run DeepCache steps (it has no "
                                   f"{', '.join(missing) or 'deepcache_branches'}); run without DeepCache, or on "
                                   "the torch, onnxruntime or tensorrt runtime.")
    available = runtime.deepcache_branches()
    if branch not in available:
        held = f"branches {sorted(available)}" if available else "no DeepCache graphs"
        raise InvalidArgumentError(
            f"The {runtime.name} runtime holds {held}, not branch {branch}. Export the graphs of branch {branch} "
            f"(`imagpose export onnx --deepcache-branch {branch}`, or prepare_runtime(..., deepcache_branches="
            f"({branch},))), or use a branch it holds, or run without DeepCache.")


class DeepCache:
    """The cache of one denoising loop: which step is full, and the deep feature rows of each CFG half."""

    def __init__(self, config: DeepCacheConfig):
        self.config = config
        self.features: dict[str, torch.Tensor] = {}
        self.full_step: int | None = None  # the step that filled the cache

    def predict(self, runtime: DeepCacheRuntime, step: int, guided: bool, sample, timestep, context, pose_features,
                grid) -> torch.Tensor:
        """The UNet prediction of ``step`` (rows ``[uncond, cond]`` when ``guided``, else ``cond``)."""
        halves, branch = HALVES[guided], self.config.branch
        if (self.full_step is not None and step - self.full_step < self.config.interval
                and all(half in self.features for half in halves)):
            feature = torch.cat([self.features[half] for half in halves])
            return runtime.unet_deepcache_shallow(sample, timestep, context, pose_features, feature, grid, branch)
        prediction, feature = runtime.unet_deepcache_full(sample, timestep, context, pose_features, grid, branch)
        self.features = dict(zip(halves, feature.chunk(len(halves))))
        self.full_step = step
        return prediction
