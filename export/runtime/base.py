"""The Runtime interface over exported components: one ``_run(component, *inputs)`` per backend.

ONNX Runtime and TensorRT differ only in how they run one component; mapping the pipeline's six calls onto
the export contracts (and the UNet's one-timestep-per-row input) lives here once.
"""

from __future__ import annotations

import torch

from ..onnx_export import ExportError


class ExportedRuntime:
    name = "exported"

    def _run(self, component: str, *inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def supported_grids(self) -> set[tuple[int, int]]:
        """Grids the exported UNet(s) bake in; empty when unknown."""
        raise NotImplementedError

    def image_encoder(self, pixels):
        return self._run("image_encoder", pixels)

    def vae_encode(self, pixels):
        return self._run("vae_encoder", pixels)

    def flc(self, latents):
        return self._run("flc_tokenizer", latents)

    def pose_guider(self, pose):
        return self._run("pose_guider", pose)

    def unet(self, sample, timestep, context, pose_features, grid):
        grids = self.supported_grids()
        if grids and tuple(grid) not in grids:
            raise ExportError(f"The exported UNet bakes in the grid(s) {sorted(grids)}; this request uses "
                              f"{grid[0]}x{grid[1]}. Export another UNet with --grid {grid[0]}x{grid[1]}.")
        timestep = timestep.float().reshape(-1).expand(sample.shape[0])  # the graphs take one per row
        return self._run("unet", sample, timestep, context, pose_features)

    def vae_decode(self, latents):
        return self._run("vae_decoder", latents)
