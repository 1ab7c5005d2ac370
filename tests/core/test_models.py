import dataclasses

import pytest
import torch

from imagpose.canvas import pad_multiple_for
from imagpose.errors import InvalidArgumentError
from imagpose.models import FLCTokenizer, IMAGPoseImageEncoder, IMAGPoseUNet, PoseGuider, cva_ops
from imagpose.models import attention as cva_registry
from imagpose.models.attention import CVABackend, cva_backends, get_cva_backend, register_cva_backend
from imagpose.models.cva import CrossViewAttention
from imagpose.presets import build_components, get_preset, randomize_weights


def _slice_reference(cva: CrossViewAttention, canvas: torch.Tensor, grid) -> torch.Tensor:
    """The official way: slice the views out, stack them as frames, paste the results into a zero canvas."""
    tt = cva.temporal_transformer
    rows, cols = grid
    b, c, H, W = canvas.shape
    h, w = H // rows, W // cols
    views = [canvas[:, :, r * h:(r + 1) * h, q * w:(q + 1) * w] for r in range(rows) for q in range(cols)]
    frames = torch.stack(views, dim=1).reshape(b * len(views), c, h, w)  # (b f) c h w
    x = tt.norm(frames).permute(0, 2, 3, 1).reshape(b * len(views), h * w, c)
    x = tt.proj_in(x)
    x = x.reshape(b, len(views), h * w, c).transpose(1, 2).reshape(b * h * w, len(views), c)  # (b d) f c
    for block in tt.transformer_blocks:
        x = block(x, get_cva_backend("eager"))
    x = tt.proj_out(x).reshape(b, h * w, len(views), c).transpose(1, 2)  # b f d c
    out = torch.zeros_like(canvas)
    for i in range(len(views)):
        r, q = divmod(i, cols)
        out[:, :, r * h:(r + 1) * h, q * w:(q + 1) * w] = x[:, i].reshape(b, h, w, c).permute(0, 3, 1, 2)
    return out + canvas


@pytest.mark.parametrize("grid", [(2, 2), (2, 3), (3, 3), (1, 2)])
def test_cva_reshape_split_equals_slice_reference(grid):
    torch.manual_seed(0)
    cva = CrossViewAttention(64, num_heads=8).eval()
    randomize_weights(cva, torch.Generator().manual_seed(1))
    canvas = torch.randn(2, 64, 6 * grid[0], 5 * grid[1])
    with torch.no_grad():
        ours, ref = cva(canvas, grid), _slice_reference(cva, canvas, grid)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_cva_view_order_and_position_encoding_matter():
    cva = CrossViewAttention(32, num_heads=8).eval()
    randomize_weights(cva, torch.Generator().manual_seed(2))
    canvas = torch.randn(1, 32, 8, 8)
    swapped = torch.cat([canvas[..., 4:], canvas[..., :4]], dim=-1)  # swap left/right views
    with torch.no_grad():
        out, out_swapped = cva(canvas, (2, 2)), cva(swapped, (2, 2))
    back = torch.cat([out_swapped[..., 4:], out_swapped[..., :4]], dim=-1)
    assert (out - back).abs().max() > 1e-3  # the view position encoding breaks the symmetry


def test_cva_backends_agree_and_unknown_backend_is_refused():
    cva = CrossViewAttention(32, num_heads=8).eval()
    randomize_weights(cva, torch.Generator().manual_seed(3))
    canvas = torch.randn(2, 32, 8, 12)
    with torch.no_grad():
        eager = cva(canvas, (2, 3))
        cva.set_backend("sdpa")
        sdpa = cva(canvas, (2, 3))
    torch.testing.assert_close(eager, sdpa, rtol=1e-5, atol=1e-5)
    unet = IMAGPoseUNet(**get_preset("tiny").unet)
    with pytest.raises(InvalidArgumentError, match="Unknown CVA backend 'does-not-exist'; available: eager"):
        unet.set_cva_backend("does-not-exist")


@pytest.fixture
def scratch_registry(monkeypatch):
    """Backends registered inside a test stay inside it."""
    monkeypatch.setattr(cva_registry, "_BACKENDS", dict(cva_registry._BACKENDS))


def _recording_backend(name: str, calls: list[str], traceable: bool = True) -> CVABackend:
    """The reference ops, each noting its name in ``calls`` when the CVA calls it."""

    def recording(op_name, fn):
        def op(*args):
            calls.append(op_name)
            return fn(*args)
        return op

    return CVABackend(name, recording("attention", cva_ops.eager_attention),
                      group_norm_to_tokens=recording("group_norm_to_tokens", cva_ops.group_norm_to_tokens),
                      layer_norm_view_pe=recording("layer_norm_view_pe", cva_ops.layer_norm_view_pe),
                      tokens_to_canvas=recording("tokens_to_canvas", cva_ops.tokens_to_canvas),
                      traceable=traceable)


def test_a_registered_backend_supplies_every_op_of_the_cva_forward(scratch_registry):
    """The CVA runs the four ops its backend supplies, and nothing else: a backend made of the reference ops gives
    the eager output bit for bit."""
    calls = []
    register_cva_backend(_recording_backend("recording", calls))
    cva = CrossViewAttention(32, num_heads=8, num_layers=2).eval()
    randomize_weights(cva, torch.Generator().manual_seed(5))
    canvas = torch.randn(2, 32, 8, 12)
    with torch.no_grad():
        eager = cva(canvas, (2, 3))
        cva.set_backend("recording")
        recorded = cva(canvas, (2, 3))
    block = ["layer_norm_view_pe", "attention"] * 2  # two attention sub-blocks per layer
    assert calls == ["group_norm_to_tokens", *block, *block, "tokens_to_canvas"]
    assert torch.equal(recorded, eager)


def test_a_backend_without_onnx_form_is_refused_inside_onnx_export(scratch_registry, monkeypatch):
    calls = []
    register_cva_backend(_recording_backend("untraceable", calls, traceable=False))
    cva = CrossViewAttention(32, num_heads=8)
    cva.set_backend("untraceable")
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    with pytest.raises(InvalidArgumentError, match="'untraceable' has no ONNX form; export with a traceable backend "
                                                   r"\(eager, .*sdpa"):
        cva(torch.randn(1, 32, 4, 4), (2, 2))
    assert calls == []  # refused before any op ran


def test_backend_constraints_are_checked_before_any_op_runs(scratch_registry):
    calls = []
    backend = _recording_backend("two-views-only", calls)
    register_cva_backend(dataclasses.replace(
        backend, constraints=(lambda call: None if call.num_views == 2 else f"V={call.num_views} is not 2",)))
    cva = CrossViewAttention(32, num_heads=8)
    cva.set_backend("two-views-only")
    with torch.no_grad():
        cva(torch.randn(1, 32, 4, 4), (1, 2))
    assert calls[0] == "group_norm_to_tokens" and calls[-1] == "tokens_to_canvas"
    calls.clear()
    with pytest.raises(InvalidArgumentError, match="'two-views-only' cannot run this call: V=4 is not 2"):
        cva(torch.randn(1, 32, 4, 4), (2, 2))
    assert calls == []


def test_a_name_is_registered_once(scratch_registry):
    eager = get_cva_backend("eager")
    register_cva_backend(eager)  # the same backend again: nothing changes
    assert get_cva_backend("eager") is eager and cva_backends().count("eager") == 1
    with pytest.raises(ValueError, match="different CVA backend is already registered as 'eager'"):
        register_cva_backend(dataclasses.replace(eager, attention=cva_ops.sdpa_attention))


def test_cva_rejects_uneven_split_and_too_many_views():
    cva = CrossViewAttention(32, num_heads=8, max_views=4)
    with pytest.raises(ValueError, match="equal views"):
        cva(torch.randn(1, 32, 7, 8), (2, 2))
    with pytest.raises(ValueError, match="at most 4"):
        cva(torch.randn(1, 32, 4, 6), (2, 3))


def test_sd15_preset_has_official_size_on_meta():
    comps = build_components("sd15", meta=True)
    unet = comps["unet"]
    assert len(unet.cva_modules()) == 21
    numbers = sum(t.numel() for t in unet.state_dict().values())
    assert numbers == 1_313_952_964  # official UNet3D state-dict numbers (manifest_full/summary.json)
    assert sum(p.numel() for p in comps["pose_guider"].parameters()) == 1_086_480
    assert sum(p.numel() for p in comps["flc_tokenizer"].parameters()) == 787_200
    assert pad_multiple_for(8, len(unet.config.block_out_channels)) == 64


def test_tiny_unet_runs_any_grid_and_keeps_shape():
    comps = build_components("tiny")
    unet = comps["unet"]
    for grid, (h, w) in (((2, 2), (16, 16)), ((2, 3), (16, 24)), ((3, 3), (24, 24))):
        x = torch.randn(2, 9, h, w)
        ctx = torch.randn(2, 21, 32)
        pose = torch.randn(2, 32, h, w)
        with torch.no_grad():
            out = unet(x, torch.tensor(500), ctx, pose, grid=grid).sample
        assert out.shape == (2, 4, h, w)
        assert torch.isfinite(out).all()


def test_final_norm_switch_changes_the_output():
    spec = dict(get_preset("tiny").unet)
    a, b = IMAGPoseUNet(**spec), IMAGPoseUNet(**{**spec, "final_norm": False})
    state = {k: v for k, v in a.state_dict().items() if not k.startswith("conv_norm_out.")}
    b.load_state_dict(state, strict=True)
    x, ctx = torch.randn(1, 9, 16, 16), torch.randn(1, 5, 32)
    with torch.no_grad():
        assert (a(x, 10, ctx).sample - b(x, 10, ctx).sample).abs().max() > 1e-3
    assert b.conv_norm_out is None


def test_pose_guider_and_flc_shapes():
    pose_guider = PoseGuider(320, 3, (16, 32, 96, 256))
    assert pose_guider(torch.rand(1, 3, 128, 96)).shape == (1, 320, 16, 12)
    assert all(p.detach().abs().sum().item() == 0 for p in pose_guider.conv_out.parameters())  # zero-initialised
    flc = FLCTokenizer(4, 768, 16)
    tokens = flc(torch.randn(2, 4, 128, 96))
    assert tokens.shape == (2, 8 * 6, 768) and flc.num_tokens(128, 96) == 48


def test_image_encoder_official_interpolation_differs_from_current_transformers():
    from transformers import Dinov2Config, Dinov2Model

    cfg = dict(get_preset("tiny").image_encoder)
    official = IMAGPoseImageEncoder(Dinov2Config(**cfg)).eval()
    current = IMAGPoseImageEncoder(Dinov2Config(**cfg, position_interpolation="size")).eval()
    plain = Dinov2Model(Dinov2Config(**cfg)).eval()
    randomize_weights(official, torch.Generator().manual_seed(4))
    current.load_state_dict(official.state_dict())
    plain.load_state_dict(official.state_dict())
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))  # not the global RNG
    with torch.no_grad():
        a = official(pixels).last_hidden_state
        b = current(pixels).last_hidden_state
        c = plain(pixels).last_hidden_state
    assert a.shape == (1, 257, 32)
    torch.testing.assert_close(b, c)  # "size" mode is today's transformers
    assert (a - b).abs().max() > 1e-3  # the official (4.40) formula is not (float rounding is ~1e-6 here)
    with pytest.raises(ValueError, match="position_interpolation"):
        IMAGPoseImageEncoder(Dinov2Config(**cfg, position_interpolation="nearest"))


def test_unet_save_and_load_roundtrip(tmp_path):
    unet = build_components("tiny")["unet"]
    unet.save_pretrained(tmp_path / "unet")
    assert (tmp_path / "unet" / "config.json").is_file()
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    again = IMAGPoseUNet.from_pretrained(tmp_path / "unet")
    for key, value in unet.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
