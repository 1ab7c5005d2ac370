"""The Runtime interface over exported components: one ``_run(component, *inputs)`` per backend.

ONNX Runtime and TensorRT differ only in how they run one component. The pipeline's six Runtime methods map
onto the export contracts through ``imagpose.runtime.RUNTIME_METHODS``; the UNet's one-timestep-per-row input
and its baked-in grid are handled here once.
"""

from __future__ import annotations

import torch

from imagpose.runtime import RUNTIME_METHODS

from ..onnx_export import ExportError


class ExportedRuntime:
    name = "exported"

    def _run(self, component: str, *inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def supported_grids(self) -> set[tuple[int, int]]:
        """Grids the exported UNet(s) bake in; empty when unknown."""
        raise NotImplementedError

    def unet(self, sample, timestep, context, pose_features, grid):
        grids = self.supported_grids()
        if grids and tuple(grid) not in grids:
            raise ExportError(f"The exported UNet bakes in the grid(s) {sorted(grids)}; this request uses "
                              f"{grid[0]}x{grid[1]}. Export another UNet with --grid {grid[0]}x{grid[1]}.")
        timestep = timestep.float().reshape(-1).expand(sample.shape[0])  # the graphs take one per row
        return self._run("unet", sample, timestep, context, pose_features)


def _one_input_method(component: str):
    def method(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._run(component, tensor)

    method.__name__ = method.__qualname__ = RUNTIME_METHODS[component]
    return method


# image_encoder, vae_encode, flc, pose_guider, vae_decode: one input through the component's graph
for _component, _method in RUNTIME_METHODS.items():
    if _component != "unet":
        setattr(ExportedRuntime, _method, _one_input_method(_component))
