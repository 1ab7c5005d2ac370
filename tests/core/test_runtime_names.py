"""One word per concept: "runtime" names what runs the networks, in the API and on every command line; the former
names still work (the keyword warns)."""

import pytest
import torch

from imagpose import scenarios
from imagpose.cli import build_parser
from imagpose.runtime import RUNTIMES

GENERATE = ["generate", "--source", "a.png", "a_pose.png", "--target", "b_pose.png"]


def test_the_former_backend_keyword_warns_and_runs_the_same(tiny_pipe, samples):
    request = scenarios.t2(*samples("person_red_front"), samples("person_red_walking")[1], tile_size=(64, 64), seed=3)
    settings = dict(num_inference_steps=1, output_type="latent", progress=False)
    expected = tiny_pipe(request, runtime=tiny_pipe.torch_runtime(), **settings).results[0].latents
    with pytest.warns(FutureWarning, match="now runtime="):
        former = tiny_pipe(request, backend=tiny_pipe.torch_runtime(), **settings).results[0].latents
    assert torch.equal(expected, former)


@pytest.mark.parametrize("argv, attribute, value", [
    ([*GENERATE, "--runtime", "onnxruntime"], "runtime", "onnxruntime"),
    ([*GENERATE, "--backend", "tensorrt"], "runtime", "tensorrt"),  # the former flag
    (["demo", "--backend", "onnxruntime"], "runtime", "onnxruntime"),
    (["parity", "--backends", "torch,tensorrt"], "runtimes", "torch,tensorrt"),
    (["bench", "--backends", "onnxruntime"], "fast_paths", "onnxruntime"),
    (["loadtest", "--server", "http://x", "--kind", "ray"], "server_kind", "ray"),
    (["loadtest", "--server", "http://x", "--server-kind", "triton"], "server_kind", "triton"),
])
def test_every_command_line_says_runtime_and_server_kind(argv, attribute, value):
    assert getattr(build_parser().parse_args(argv), attribute) == value


def test_the_runtime_choices_are_the_one_list(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*GENERATE, "--runtime", "cuda-graph"])
    assert "choose from " + ", ".join(f"'{name}'" for name in RUNTIMES) in capsys.readouterr().err
