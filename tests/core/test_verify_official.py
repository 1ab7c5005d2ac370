"""Our implementation reproduces every official-code fixture (whatever config, seed or tile shape it has)."""

import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

from imagpose.verify import FLOAT_ATOL, compare_tensor, find_fixtures, fixture_kind, verify_fixture
from tests.conftest import official_fixture_params


@pytest.mark.parametrize("folder", official_fixture_params())
def test_every_official_fixture_passes(folder):
    report = verify_fixture(folder)
    print(report.format())
    assert report.checks, "a fixture with nothing to check"
    assert report.passed, report.format()


def test_the_shipped_fixture_set_is_complete():
    """Every fixture kind ships with the repository, so the verification runs for every user of it."""
    from tests.conftest import SHIPPED_FIXTURES

    kinds = sorted(fixture_kind(p) for p in find_fixtures(SHIPPED_FIXTURES))
    assert kinds == ["manifest", "pipeline", "unet"], kinds


def test_a_missing_fixture_set_fails_instead_of_skipping(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGPOSE_FIXTURES", str(tmp_path / "absent"))
    with pytest.raises(pytest.UsageError, match="no official fixtures"):
        official_fixture_params()


@pytest.fixture
def unet_fixture(fixture_root):
    """The first official fixture folder of the unet kind."""
    folders = [p for p in find_fixtures(fixture_root) if fixture_kind(p) == "unet"]
    assert folders, f"no unet fixture under {fixture_root}"
    return folders[0]


@pytest.fixture
def unet_fixture_copy(unet_fixture, tmp_path):
    """A writable copy of the unet fixture, for tests that alter what it stores."""
    copy = tmp_path / unet_fixture.name
    shutil.copytree(unet_fixture, copy)
    return copy


def test_unet_fixture_checks_outputs_and_intermediates(unet_fixture):
    report = verify_fixture(unet_fixture)
    names = {c.name for c in report.checks}
    assert "outputs/out" in names
    assert any(n.startswith("intermediates/") and "motion_modules" in n for n in names)


def test_verify_detects_a_perturbed_output(unet_fixture_copy):
    """The check can fail: perturb one stored output by 10x the tolerance and expect FAIL (and exit code 1)."""
    copy = unet_fixture_copy
    outputs = load_file(str(copy / "outputs.safetensors"))
    outputs["out"] = outputs["out"].clone()
    outputs["out"][0, 0, 0, 0, 0] += 10 * FLOAT_ATOL + 1e-3
    save_file(outputs, str(copy / "outputs.safetensors"))
    report = verify_fixture(copy)
    assert not report.passed
    assert [c.name for c in report.checks if not c.passed] == ["outputs/out"]
    proc = subprocess.run([sys.executable, "-m", "imagpose.cli", "verify-official", str(copy)],
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL" in proc.stdout


def test_compare_tensor_rules():
    import torch

    e = torch.ones(3)
    assert compare_tensor("x", e + 5e-5, e).passed
    assert not compare_tensor("x", e + 5e-4, e).passed
    assert not compare_tensor("x", torch.ones(4), e).passed
    assert not compare_tensor("x", None, e).passed
    assert compare_tensor("t", torch.tensor([1, 2]), torch.tensor([1, 2])).passed
    assert not compare_tensor("t", torch.tensor([1, 3]), torch.tensor([1, 2])).passed
    assert not compare_tensor("x", torch.tensor([float("nan"), 1, 1]), e).passed


def test_hooks_inside_the_cva_are_compared_in_the_official_view_layout(unet_fixture_copy):
    """Official CVA internals stack the views as frames; an intermediate stored that way must still match."""
    import torch

    copy = unet_fixture_copy
    inter = load_file(str(copy / "intermediates.safetensors"))
    canvas = inter["down_blocks.0.motion_modules.0.out"].squeeze(2)  # (B, C, H, W), official values
    h, w = canvas.shape[-2] // 2, canvas.shape[-1] // 2
    quadrants = [canvas[..., :h, :w], canvas[..., :h, w:], canvas[..., h:, :w], canvas[..., h:, w:]]
    inter["down_blocks.0.motion_modules.0.temporal_transformer.out"] = torch.stack(quadrants, dim=2).contiguous()
    save_file(inter, str(copy / "intermediates.safetensors"))
    report = verify_fixture(copy)
    check = next(c for c in report.checks if c.name.endswith("temporal_transformer.out"))
    assert check.passed, report.format()


def test_official_cva_token_layout():
    import torch

    from imagpose.verify import official_cva_layout

    b, hw, v, c = 2, 6, 4, 3
    official = torch.arange(b * v * hw * c, dtype=torch.float32).reshape(b * v, hw, c)  # (b f) d c
    ours = official.reshape(b, v, hw, c).permute(0, 2, 1, 3).reshape(b * hw, v, c)  # (b d) f c
    assert torch.equal(official_cva_layout(ours, official, (2, 2)), official)
