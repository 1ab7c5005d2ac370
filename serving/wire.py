"""The wire format every server and client of this package speaks: one generation request or result as JSON.

A request is a :class:`~imagpose.canvas.PoseRequest` plus the sampling settings of its call (a
:class:`~imagpose.sampling_config.SamplingConfig`, in the form of its ``to_dict``); images travel as
base64 PNG (lossless, so a served result equals the in-process one) and keypoints as our ``openpose18`` JSON::

    {"grid": [2, 2], "tile_size": [128, 96] | null, "seed": 0 | null, "reference": 0 | null, "name": "a" | null,
     "views": [{"image": "<base64 PNG>" | null, "pose": "<base64 PNG>" | {"format": "openpose18", ...}}, ...],
     "settings": {"num_inference_steps": 20, "guidance_scale": 2.0, "sampler": "ddim", "eta": 0.0,
                  "guidance_interval": [0.0, 0.5] | null, "deepcache": {"interval": 3, "branch": 0} | null}}

``settings`` null, or settings left out, take the serving pipeline's defaults (``pipe.default_sampling``: the
paper's, or a distilled student's few-step sampling), so a client need not know which model a server holds.

A result is a :class:`~imagpose.pipeline.GenerationResult`::

    {"name": ..., "seed": 0, "target_indices": [3], "targets": ["<base64 PNG>", ...], "canvas": "<base64 PNG>",
     "latents": {"shape": [4, h, w], "float32": "<base64 little-endian>"}}

Everything a client can get wrong raises :class:`WireFormatError` naming the field and the fix, so a server
answers it with a 4xx error and goes on serving.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imagpose.canvas import PoseRequest, View, validate_request
from imagpose.errors import InvalidArgumentError
from imagpose.images import ImageInputError, decode_image, load_image
from imagpose.json_parsing import parse_json
from imagpose.pipeline import GenerationResult
from imagpose.pose import Keypoints, keypoints_from_json
from imagpose.sampling_config import SamplingConfig, merged_settings

from .request_limits import MAX_REQUEST_BYTES, RequestTooLargeError


class WireFormatError(InvalidArgumentError):
    """A request or result that does not follow the wire format; the message names the field and the fix."""


@dataclass
class WireRequest:
    request: PoseRequest
    settings: dict | None  # the sampling fields the client gave (None: none); :meth:`sampling` completes them

    def sampling(self, pipe) -> SamplingConfig:
        """The request's sampling on the serving pipeline: its defaults with the given fields, checked against its
        models (InvalidArgumentError otherwise)."""
        return merged_settings(pipe.sampling_config(), self.settings).check_pipeline(pipe)


# ---------------------------------------------------------------------------------------------------- images
def encode_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(text, field: str) -> Image.Image:
    """The image in a base64 field, decoded by the rules of image files (:func:`imagpose.images.decode_image`:
    the same pixel limit, checked on the header before decoding)."""
    if not isinstance(text, str):
        raise WireFormatError(f"{field} must be a base64 PNG string, got {type(text).__name__}.")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WireFormatError(f"{field} is not valid base64 ({exc}); send base64.b64encode(png_bytes).") from exc
    try:
        return decode_image(io.BytesIO(data), field)
    except ImageInputError as exc:
        raise WireFormatError(f"{exc} Send a PNG or JPEG file's bytes.") from exc


def _image_field(source, field: str) -> str:
    """Any image input the pipeline accepts (path, PIL, uint8 array) as base64 PNG."""
    return encode_png(load_image(source, field))


def _pose_field(pose, field: str, image_size: tuple[int, int] | None):
    """A pose image as base64 PNG, keypoints as openpose18 JSON (a size-less keypoint file measured on
    ``image_size`` = (width, height) of its person image, as the canvas reads it)."""
    if isinstance(pose, Keypoints):
        return pose.to_json()
    if isinstance(pose, (str, os.PathLike)) and Path(pose).suffix.lower() == ".json":
        return keypoints_from_json(pose, *(image_size or (None, None))).to_json()
    return _image_field(pose, field)


# ---------------------------------------------------------------------------------------------------- requests
def request_to_json(request: PoseRequest, sampling: SamplingConfig | dict | None = None) -> dict:
    """The wire form of ``request`` and its ``sampling``: a whole :class:`SamplingConfig`, a dict of some of its
    fields (the server's defaults fill the rest) or None (the server's defaults); images are read and encoded here,
    so the server needs no access to the files."""
    validate_request(request)
    if isinstance(sampling, dict):
        _sampling_from_json(sampling)  # the client's own mistakes fail here, before anything is sent
    views = []
    for i, view in enumerate(request.views):
        image = None if view.image is None else load_image(view.image, f"views[{i}].image")
        views.append({"image": None if image is None else encode_png(image),
                      "pose": _pose_field(view.pose, f"views[{i}].pose", None if image is None else image.size)})
    return {"grid": list(request.grid), "tile_size": None if request.tile_size is None else list(request.tile_size),
            "seed": request.seed, "reference": request.reference, "name": request.name, "views": views,
            "settings": sampling.to_dict() if isinstance(sampling, SamplingConfig) else sampling}


def _int_pair(value, field: str):
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise WireFormatError(f"{field} must be two positive integers, e.g. [2, 2], got {value!r}.")
    return tuple(value)


def _optional_int(data: dict, key: str):
    value = data.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise WireFormatError(f"{key} must be a non-negative integer or null, got {value!r}.")
    return value


def _sampling_from_json(data) -> dict | None:
    """The given settings, checked on their own (on the paper's defaults) so malformed ones fail at parsing."""
    try:
        merged_settings(SamplingConfig(), data)
    except InvalidArgumentError as exc:
        raise WireFormatError(f"settings: {exc}") from exc
    return data


def request_from_json(data) -> WireRequest:
    """Parse and check one wire request; every problem is a :class:`WireFormatError` (a 4xx for servers)."""
    if isinstance(data, (bytes, str)):
        if len(data) > MAX_REQUEST_BYTES:
            raise RequestTooLargeError(len(data))
        try:
            data = parse_json(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise WireFormatError(f"The request is not JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise WireFormatError(f"A request must be a JSON object, got {type(data).__name__}.")
    known = {"grid", "tile_size", "seed", "reference", "name", "views", "settings"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise WireFormatError(f"The request has unknown keys {unknown}; known: {sorted(known)}.")
    views_data = data.get("views")
    if not isinstance(views_data, list) or not views_data:
        raise WireFormatError("views must be a non-empty list of {\"image\": PNG | null, \"pose\": PNG | keypoints}.")
    views = []
    for i, view in enumerate(views_data):
        if not isinstance(view, dict) or "pose" not in view:
            raise WireFormatError(f"views[{i}] must be an object with a 'pose' (and 'image' for a source view).")
        image = None if view.get("image") is None else decode_png(view["image"], f"views[{i}].image")
        pose = view["pose"]
        pose = keypoints_from_json(pose) if isinstance(pose, dict) else decode_png(pose, f"views[{i}].pose")
        views.append(View(pose=pose, image=image))
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise WireFormatError(f"name must be a string or null, got {name!r}.")
    request = PoseRequest(views=views, grid=_int_pair(data.get("grid", [2, 2]), "grid") or (2, 2),
                          tile_size=_int_pair(data.get("tile_size"), "tile_size"), seed=_optional_int(data, "seed"),
                          reference=_optional_int(data, "reference"), name=name)
    validate_request(request)
    return WireRequest(request, _sampling_from_json(data.get("settings")))


# ---------------------------------------------------------------------------------------------------- results
def result_to_json(result: GenerationResult) -> dict:
    """The wire form of a result of ``output_type="pil"``."""
    latents = result.latents.float().contiguous().numpy().astype("<f4")
    return {"name": result.name, "seed": result.seed, "target_indices": list(result.target_indices),
            "targets": [encode_png(image) for image in result.targets],
            "canvas": None if result.canvas is None else encode_png(result.canvas),
            "latents": {"shape": list(latents.shape), "float32": base64.b64encode(latents.tobytes()).decode("ascii")}}


def result_from_json(data) -> GenerationResult:
    """A :class:`~imagpose.pipeline.GenerationResult` (PIL images) from its wire form."""
    try:
        if isinstance(data, (bytes, str)):
            data = parse_json(data)
        latents = data["latents"]
        array = np.frombuffer(base64.b64decode(latents["float32"]), dtype="<f4").reshape(latents["shape"])
        targets = [decode_png(text, f"targets[{i}]").convert("RGB") for i, text in enumerate(data["targets"])]
        canvas = None if data.get("canvas") is None else decode_png(data["canvas"], "canvas").convert("RGB")
        indices = data["target_indices"]
        if (not isinstance(indices, list) or len(indices) != len(targets)
                or not all(type(i) is int and i >= 0 for i in indices)):
            raise ValueError(f"target_indices must be one tile index per target image, got {indices!r}")
        return GenerationResult(targets=targets, target_indices=indices, canvas=canvas,
                                latents=torch.from_numpy(array.copy()), seed=data["seed"], name=data.get("name"))
    except (KeyError, TypeError, ValueError) as exc:
        raise WireFormatError(f"The server's answer is not a wire-format result ({exc!r}).") from exc
