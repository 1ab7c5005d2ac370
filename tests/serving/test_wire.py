"""The wire format: a request survives the trip (the served pipeline gets the same canvas), results come back
bit for bit, and every malformed field is a WireFormatError that names it."""

import base64
import copy
import json

import pytest
import torch
from PIL import Image

from imagpose import scenarios
from imagpose.pose import keypoints_from_json
from imagpose.samples import sample
from imagpose.sampling_config import DeepCacheConfig, SamplingConfig
from imagpose.serving.request_limits import MAX_REQUEST_BYTES, RequestTooLargeError
from imagpose.serving.wire import (
    WireFormatError,
    request_from_json,
    request_to_json,
    result_from_json,
    result_to_json,
)

from .hostile_bodies import png_of_size, png_that_pil_reads_as_a_syntax_error


def t2_request(seed=3):
    image, pose = sample("person_red_front")
    _, target = sample("person_red_walking")
    return scenarios.t2(image, pose, keypoints_from_json(target), seed=seed, tile_size=(64, 64), name="a")


def test_a_request_round_trips_to_the_same_canvas(tiny_pipe):
    request = t2_request()
    sampling = SamplingConfig(4, 1.5, "unipc", guidance_interval=(0.0, 0.5))
    wire = json.loads(json.dumps(request_to_json(request, sampling)))
    parsed = request_from_json(wire)
    assert parsed.sampling(tiny_pipe) == sampling
    assert parsed.sampling(tiny_pipe).guidance_interval == (0.0, 0.5)
    assert (parsed.request.grid, parsed.request.tile_size, parsed.request.seed, parsed.request.name) == (
        (2, 2), (64, 64), 3, "a")
    ours, theirs = tiny_pipe.build_canvas(request), tiny_pipe.build_canvas(parsed.request)
    assert ours.layout == theirs.layout and ours.roles == theirs.roles
    for name in ("person", "pose", "flag"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    assert ours.reference.tobytes() == theirs.reference.tobytes()


def test_a_result_round_trips_bit_for_bit(tiny_pipe):
    result = tiny_pipe(t2_request(), num_inference_steps=2, progress=False).results[0]
    back = result_from_json(json.dumps(result_to_json(result)))
    assert torch.equal(back.latents, result.latents)
    assert back.target_indices == result.target_indices and back.seed == result.seed and back.name == "a"
    assert [im.tobytes() for im in back.targets] == [im.tobytes() for im in result.targets]
    assert back.canvas.tobytes() == result.canvas.tobytes()


@pytest.mark.parametrize("edit, words", [
    (lambda d: d.update(views="x"), "views must be"),
    (lambda d: d["views"][0].update(image="not base64!"), "views[0].image is not valid base64"),
    (lambda d: d["views"][0].update(image=base64.b64encode(b"garbage").decode()), "views[0].image is not a readable"),
    (lambda d: d.update(grid=[2]), "grid must be two positive integers"),
    (lambda d: d.update(seed=-1), "seed must be"),
    (lambda d: d.update(colour="red"), "unknown keys ['colour']"),
    (lambda d: d["settings"].update(sampler="euler"), "settings: Unknown sampler 'euler'"),
    (lambda d: d["settings"].update(num_inference_steps="20"), "num_inference_steps must be an integer"),
    (lambda d: d["settings"].update(guidance_scale=None), "guidance_scale must be a number"),
    (lambda d: d["settings"].update(guidance_interval=[0.6, 0.2]), "empty or inverted"),
    (lambda d: d["settings"].update(guidance_scale=1.0, guidance_interval=[0.0, 0.5]), "turns off"),
])
def test_malformed_requests_name_the_field(edit, words):
    data = request_to_json(t2_request(), SamplingConfig())
    edit(data)
    with pytest.raises(WireFormatError, match=None) as info:
        request_from_json(json.dumps(data))
    assert words in str(info.value)


def test_not_json_is_a_wire_error():
    with pytest.raises(WireFormatError, match="not JSON"):
        request_from_json(b"{nope")


def test_an_image_pil_fails_on_or_over_the_pixel_limit_is_a_wire_error(monkeypatch):
    data = request_to_json(t2_request())
    data["views"][0]["image"] = png_that_pil_reads_as_a_syntax_error()
    with pytest.raises(WireFormatError, match=r"views\[0\].image is not a readable image \(broken PNG file"):
        request_from_json(json.dumps(data))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40x40 lies where PIL itself only warns (1x to 2x)
    data["views"][0]["image"] = png_of_size(40, 40)
    with pytest.raises(WireFormatError, match="declares more than 1,000 pixels"):
        request_from_json(json.dumps(data))


def test_a_request_over_the_size_limit_is_refused_before_parsing():
    with pytest.raises(RequestTooLargeError, match="over the 64 MiB a request can be"):
        request_from_json(b" " * (MAX_REQUEST_BYTES + 1))


def test_settings_left_out_take_the_serving_models_defaults(tiny_pipe):
    student = copy.copy(tiny_pipe)
    student.default_sampling = SamplingConfig(num_inference_steps=4, guidance_scale=1.0)
    assert request_to_json(t2_request())["settings"] is None
    assert request_from_json(request_to_json(t2_request())).sampling(student) == student.default_sampling
    partial = request_from_json(request_to_json(t2_request(), {"num_inference_steps": 2}))
    assert partial.sampling(student) == SamplingConfig(num_inference_steps=2, guidance_scale=1.0)
    assert partial.sampling(tiny_pipe) == SamplingConfig(num_inference_steps=2)
    with pytest.raises(WireFormatError, match="unknown keys"):
        request_to_json(t2_request(), {"steps": 2})


@pytest.mark.parametrize("parse", [request_from_json, result_from_json])
def test_deeply_nested_json_is_a_wire_error(parse):
    for body in ("[" * 100_000, '{"views": ' * 100_000):
        with pytest.raises(WireFormatError, match="nested too deeply"):
            parse(body.encode())


def test_a_request_carries_eta_and_deepcache(tiny_pipe):
    sampling = SamplingConfig(6, sampler="ddim", eta=0.5, deepcache=DeepCacheConfig(3, 1))
    wire = json.loads(json.dumps(request_to_json(t2_request(), sampling)))
    assert wire["settings"]["deepcache"] == {"interval": 3, "branch": 1} and wire["settings"]["eta"] == 0.5
    assert request_from_json(wire).sampling(tiny_pipe) == sampling
    wire["settings"]["deepcache"] = {"interval": 0}
    with pytest.raises(WireFormatError, match="settings: deepcache_interval must be an integer >= 1, got 0"):
        request_from_json(wire)
