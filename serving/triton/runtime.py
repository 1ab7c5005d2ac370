"""The pipeline's Runtime inside a Triton server: every network call is a request to the repository's model of
that network (Triton's business-logic scripting, ``pb_utils.InferenceRequest(...).exec()``).

``pb_utils`` (``triton_python_backend_utils``, which exists only inside the Python backend) is passed in, so the
class imports anywhere.
"""

from __future__ import annotations

import numpy as np
import torch

from imagpose.errors import InvalidArgumentError
from imagpose.export.components import COMPONENTS, CONTRACTS
from imagpose.export.runtime.base import ExportedRuntime

NUMPY_TYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16}


class NetworkModelError(RuntimeError):
    """A network model answered with an error the orchestrator did not foresee (the server's problem, not the
    request's: shapes and grids are checked before anything runs)."""


class TritonModelRuntime(ExportedRuntime):
    """Runs each component on the Triton model of that name (``models`` maps component -> model name).

    ``input_types``: {component: {input: "TYPE_FP32" | "TYPE_FP16"}}, the tensors' types in the models' configs;
    ``grid``: the view grid the served UNet bakes in; ``unet_rows``: (least, most) rows per UNet call the served
    UNet takes (None: any), checked before each UNet call.
    """

    name = "triton"

    def __init__(self, pb_utils, input_types: dict, grid: tuple[int, int], models: dict | None = None,
                 unet_rows: tuple[int, int] | None = None):
        self.pb_utils = pb_utils
        self.unet_rows = None if unet_rows is None else tuple(unet_rows)
        self.input_types = input_types
        self.grid = tuple(grid)
        self.models = models or {component: component for component in COMPONENTS}

    def _run(self, component: str, *inputs: torch.Tensor) -> torch.Tensor:
        contract = CONTRACTS[component]
        types = self.input_types[component]
        tensors = [self.pb_utils.Tensor(name, np.ascontiguousarray(t.detach().cpu().numpy().astype(NUMPY_TYPES[
            types[name]], copy=False))) for name, t in zip(contract.input_names, inputs)]
        request = self.pb_utils.InferenceRequest(model_name=self.models[component], inputs=tensors,
                                                 requested_output_names=contract.output_names)
        response = request.exec()
        if response.has_error():
            raise NetworkModelError(f"Model {self.models[component]!r} failed: {response.error().message()}")
        out = self.pb_utils.get_output_tensor_by_name(response, contract.output_names[0]).as_numpy()
        reference = inputs[0]
        dtype = reference.dtype if reference.is_floating_point() else torch.float32
        return torch.from_numpy(np.array(out)).to(reference.device, dtype)

    def supported_grids(self) -> set[tuple[int, int]]:
        return {self.grid}

    def components(self) -> set[str]:
        return set(self.models)

    def _unet_timestep(self, sample, timestep, grid) -> torch.Tensor:
        rows = sample.shape[0]
        if self.unet_rows is not None and not self.unet_rows[0] <= rows <= self.unet_rows[1]:
            raise InvalidArgumentError(self.rows_message(rows))
        return super()._unet_timestep(sample, timestep, grid)

    def rows_message(self, rows: int) -> str:
        low, high = self.unet_rows
        return (f"The served UNet takes {low} to {high} rows per call; this call needs {rows} (each request is two "
                "rows under classifier-free guidance, one without). Send as many requests, or a guidance_scale that "
                "fits, or serve engines whose UNet profile covers it (imagpose export trt --bucket).")
