"""The ``imagpose`` model's work: wire-format requests in, the pipeline's own call over in-server network models,
wire-format results out.

Triton's dynamic batcher hands :meth:`Orchestrator.execute` every request queued within the batching delay;
requests with the same sampling settings run as one ``IMAGPosePipeline.__call__`` (the pipeline batches those of one
canvas geometry into shared UNet calls). A request the user can fix (any :class:`~imagpose.errors.IMAGPoseError`:
malformed JSON, a grid or tile size this repository does not serve, bad settings, DeepCache (the repository has no
DeepCache graphs), the memory limit) gets an
INVALID_ARG error (HTTP 400) naming the problem, and the other requests of the batch are answered; any other
exception is a bug: its traceback goes to the server log, the request that raised it gets an INTERNAL error that
says so (never the traceback or a server path), and the other requests of the batch are answered.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import numpy as np

from imagpose.batch_runner import run_isolated
from imagpose.deepcache import check_deepcache_runtime
from imagpose.errors import IMAGPoseError, InvalidArgumentError
from imagpose.io import read_json_file
from imagpose.sampling_config import SamplingConfig

from ..wire import request_from_json, result_to_json
from .model_configs import REQUEST_INPUT, RESULT_OUTPUT
from .pipeline_configs import load_config_only_pipeline
from .runtime import TritonModelRuntime

INTERNAL_MESSAGE = "The server failed on this request (a bug, not the request's fault); its log has the details."
SERVING_RECORD = "serving.json"  # in the orchestrator's version folder: what the repository serves


class Orchestrator:
    def __init__(self, pb_utils, version_folder: str | Path):
        folder = Path(version_folder)
        self.pb_utils = pb_utils
        self.record = read_json_file(folder / SERVING_RECORD, "rebuild the repository with `imagpose export triton`")
        self.pipe = load_config_only_pipeline(folder / "pipeline")
        self.grid = tuple(self.record["grid"])
        self.runtime = TritonModelRuntime(pb_utils, self.record["input_types"], self.grid, self.record["models"],
                                          self.record["unet_rows"])
        self.latent_sizes = [tuple(size) for size in self.record["latent_sizes"] or []]  # static shapes only

    # ------------------------------------------------------------------ one execute() of the dynamic batcher
    def execute(self, requests) -> list:
        parsed, errors = {}, {}
        for index, request in enumerate(requests):
            rows = self.pb_utils.get_input_tensor_by_name(request, REQUEST_INPUT).as_numpy().reshape(-1)
            try:
                parsed[index] = [self.parse(row) for row in rows]
            except IMAGPoseError as exc:
                errors[index] = exc
            except Exception as exc:  # a bug: logged, and only this request fails
                errors[index] = self._log_bug("parsing a request", exc)
        groups: dict[SamplingConfig, list[tuple[int, int]]] = {}
        for index, items in parsed.items():
            for row, item in enumerate(items):
                groups.setdefault(item[1], []).append((index, row))
        answers = {}
        for sampling, members in groups.items():
            outcomes = self.generate([parsed[i][row] for i, row in members], sampling)
            for (index, row), outcome in zip(members, outcomes):
                if isinstance(outcome, BaseException):
                    errors.setdefault(index, outcome)
                else:
                    answers[index, row] = outcome
        return [self.response(index, len(parsed.get(index, ())), answers, errors.get(index))
                for index in range(len(requests))]

    def response(self, index: int, rows: int, answers: dict, error: BaseException | None):
        pb = self.pb_utils
        if isinstance(error, IMAGPoseError):
            return pb.InferenceResponse(error=pb.TritonError(str(error), pb.TritonError.INVALID_ARG))
        if error is not None:
            return pb.InferenceResponse(error=pb.TritonError(INTERNAL_MESSAGE, pb.TritonError.INTERNAL))
        data = np.array([[answers[index, row]] for row in range(rows)], dtype=np.object_)
        return pb.InferenceResponse(output_tensors=[pb.Tensor(RESULT_OUTPUT, data)])

    # ------------------------------------------------------------------ requests
    def parse(self, data: bytes) -> tuple:
        """(request, sampling) of a wire request, checked against what this repository serves before anything
        runs; settings the request leaves out take the served pipeline's defaults."""
        wire = request_from_json(data)
        sampling = wire.sampling(self.pipe)
        if sampling.deepcache is not None:
            check_deepcache_runtime(self.runtime, sampling.deepcache.branch)
        request = wire.request
        if tuple(request.grid) != self.grid:
            raise InvalidArgumentError(f"This server's UNet bakes in the {self.grid[0]}x{self.grid[1]} grid; the "
                                       f"request uses {request.grid[0]}x{request.grid[1]}. Send grid "
                                       f"{list(self.grid)}, or serve a repository exported with --grid "
                                       f"{request.grid[0]}x{request.grid[1]}.")
        if self.latent_sizes:
            layout = self.pipe.request_layout(request)
            if layout.latent_size not in self.latent_sizes:
                tiles = ", ".join(f"{h}x{w}" for h, w in self.record["tile_sizes"])
                raise InvalidArgumentError(
                    f"This server's networks take static shapes: tiles of {tiles} (padded to multiples of "
                    f"{self.pipe.pad_multiple}); the request's tiles are {layout.tile_height}x{layout.tile_width}. "
                    "Send tile_size accordingly, or serve engines built with `imagpose export trt --dynamic`.")
        return request, sampling

    def generate(self, items: list, sampling: SamplingConfig) -> list:
        """Results (wire JSON bytes) or exceptions, one per item, through the batching core: calls as large as the
        served UNet's batch allows, and a failed call retried per request, so only the bad ones fail."""
        rows = self.runtime.unet_rows  # (least, most) rows per UNet call, or None (any)
        per_request = 2 if sampling.guidance_scale > 1.0 else 1  # UNet rows: [uncond, cond] under CFG
        size = len(items) if rows is None else rows[1] // per_request
        if size < 1:
            return [InvalidArgumentError(self.runtime.rows_message(per_request))] * len(items)
        outcomes = run_isolated(self.pipe, [request for request, _ in items], sampling, max_batch=size,
                                runtime=self.runtime)
        return [self._outcome(outcome) for outcome in outcomes]

    def _outcome(self, outcome):
        if isinstance(outcome, IMAGPoseError):
            return outcome
        if isinstance(outcome, BaseException):  # a bug: its traceback in the server log, only its request fails
            return self._log_bug("a request", outcome)
        return json.dumps(result_to_json(outcome)).encode()

    def _log_bug(self, during: str, exc: Exception) -> Exception:
        self.pb_utils.Logger.log_error(f"imagpose: {during} failed:\n"
                                       + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        return exc
