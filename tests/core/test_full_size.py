"""Full-size (SD1.5) checks: minutes on CPU, so in the `slow` tier (`make test-slow`)."""

import pytest
import torch

from imagpose import scenarios
from imagpose.convert import convert_unet
from imagpose.presets import build_pipeline, get_preset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sd15_pipe():
    return build_pipeline("sd15", seed=0)


def test_sd15_pipeline_one_step_at_256_tiles(sd15_pipe, samples):
    image, pose = samples("person_red_front")
    _, target = samples("person_red_walking")
    request = scenarios.t2(image, pose, target, tile_size=(256, 256), seed=0)
    result = sd15_pipe(request, num_inference_steps=1, output_type="pt", progress=False).results[0]
    assert result.targets[0].shape == (3, 256, 256)
    assert result.latents.shape == (4, 64, 64)
    assert torch.isfinite(result.latents).all()


def test_sd15_unet_fp16_official_checkpoint_converts(sd15_pipe, tmp_path):
    state = {k: v.half() for k, v in sd15_pipe.unet.state_dict().items()}
    path = tmp_path / "motion_module-200001.pth"
    torch.save(state, path)
    unet, report = convert_unet(path, dict(get_preset("sd15").unet))
    assert report.num_tensors == 1274 and report.dtypes == ["float16"]
    assert all(torch.equal(v, state[k].float()) for k, v in unet.state_dict().items())
