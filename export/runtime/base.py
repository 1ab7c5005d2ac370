"""The Runtime interface over exported components: one ``_run(component, *inputs)`` per backend.

ONNX Runtime and TensorRT differ only in how they run one component. The pipeline's six Runtime methods map
onto the export contracts through ``imagpose.runtime.RUNTIME_METHODS``, and DeepCache's two UNet forms onto the
graphs of their branch (``unet_deepcache_full_b<k>``, ``unet_deepcache_shallow_b<k>``); the UNet graphs'
one-timestep-per-row input and baked-in grid are handled here once. ``_run`` returns one tensor per output of the
component's contract (a tuple when there are several).
"""

from __future__ import annotations

import torch

from imagpose.runtime import DEEPCACHE_METHODS, RUNTIME_METHODS

from ..components import deepcache_component, deepcache_form
from ..onnx_export import ExportError


def export_hint(component: str) -> str:
    """How to export ``component``: DeepCache graphs only when their branch is asked for."""
    form = deepcache_form(component)
    if form is None:
        return "export it with `imagpose export onnx`"
    return (f"export the DeepCache graphs of branch {form[1]} with ExportOptions(deepcache_branches=({form[1]},)) "
            f"or prepare_runtime(..., deepcache_branches=({form[1]},))")


class ExportedRuntime:
    name = "exported"

    def _run(self, component: str, *inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def supported_grids(self) -> set[tuple[int, int]]:
        """Grids the exported UNet(s) bake in; empty when unknown."""
        raise NotImplementedError

    def components(self) -> set[str]:
        """The exported components this runtime can run."""
        raise NotImplementedError

    def deepcache_branches(self) -> set[int]:
        """The DeepCache skip branches whose two graphs (full and shallow step) this runtime holds."""
        forms: dict[int, set[str]] = {}
        for form in filter(None, map(deepcache_form, self.components())):
            forms.setdefault(form[1], set()).add(form[0])
        return {branch for branch, held in forms.items() if held == set(DEEPCACHE_METHODS)}

    def _unet_timestep(self, sample, timestep, grid) -> torch.Tensor:
        """The UNet graphs' timestep input (one per row), once the grid is known to be one they bake in."""
        grids = self.supported_grids()
        if grids and tuple(grid) not in grids:
            raise ExportError(f"The exported UNet bakes in the grid(s) {sorted(grids)}; this request uses "
                              f"{grid[0]}x{grid[1]}. Export another UNet with --grid {grid[0]}x{grid[1]}.")
        return timestep.float().reshape(-1).expand(sample.shape[0])

    def unet(self, sample, timestep, context, pose_features, grid):
        return self._run("unet", sample, self._unet_timestep(sample, timestep, grid), context, pose_features)

    def unet_deepcache_full(self, sample, timestep, context, pose_features, grid, branch):
        return self._run(deepcache_component("unet_deepcache_full", branch), sample,
                         self._unet_timestep(sample, timestep, grid), context, pose_features)

    def unet_deepcache_shallow(self, sample, timestep, context, pose_features, deep_feature, grid, branch):
        return self._run(deepcache_component("unet_deepcache_shallow", branch), sample,
                         self._unet_timestep(sample, timestep, grid), context, pose_features, deep_feature)


def _one_input_method(component: str):
    def method(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._run(component, tensor)

    method.__name__ = method.__qualname__ = RUNTIME_METHODS[component]
    return method


# image_encoder, vae_encode, flc, pose_guider, vae_decode: one input through the component's graph
for _component, _method in RUNTIME_METHODS.items():
    if _component != "unet":
        setattr(ExportedRuntime, _method, _one_input_method(_component))
