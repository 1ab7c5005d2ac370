"""Fused split + per-view GroupNorm + token layout vs its fp32 reference (= the eager CVA code)."""

import pytest
import torch

from imagpose.kernels.group_norm import group_norm_to_tokens, group_norm_to_tokens_ref

from .parity import DTYPES, assert_within_torch_error, case_id, grads, grid

CHANNELS_GROUPS = ((64, 32), (40, 8), (320, 32))  # channels per group 2, 5 (odd), 10 (SD1.5 level 0)
GRIDS = ((2, 2), (2, 3))
SIZES = ((1, 3, 5), (2, 5, 7), (8, 3, 1))  # (batch, h, w) of each view
EPS = 1e-6


def _inputs(batch, channels, grid_, tile, dtype, device, seed):
    generator = torch.Generator().manual_seed(seed)
    (rows, cols), (h, w) = grid_, tile
    canvas = torch.randn(batch, channels, rows * h, cols * w, generator=generator) * 3 + 1  # not centred
    weight = torch.randn(channels, generator=generator)
    bias = torch.randn(channels, generator=generator)
    return [t.to(device, dtype) for t in (canvas, weight, bias)]


def _check(canvas, weight, bias, grid_, groups, dtype):
    inputs = [t.detach().requires_grad_() for t in (canvas, weight, bias)]
    ref_inputs = [t.detach().float().requires_grad_() for t in inputs]
    out = group_norm_to_tokens(inputs[0], grid_, groups, inputs[1], inputs[2], EPS)
    out_ref = group_norm_to_tokens_ref(ref_inputs[0], grid_, groups, ref_inputs[1], ref_inputs[2], EPS)
    out_pt = group_norm_to_tokens_ref(inputs[0], grid_, groups, inputs[1], inputs[2], EPS, upcast=False)
    assert out.shape == out_ref.shape and out.dtype == dtype and out.is_contiguous()
    assert_within_torch_error("tokens", out, out_pt, out_ref, dtype)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(out.device)
    for name, g, g_ref, g_pt in zip(("dcanvas", "dweight", "dbias"), grads(out, inputs, grad_out),
                                    grads(out_ref, ref_inputs, grad_out), grads(out_pt, inputs, grad_out)):
        assert_within_torch_error(name, g, g_pt, g_ref, dtype, factor=3.0)


@pytest.mark.parametrize("dtype, channels_groups, grid_, size",
                         grid(DTYPES, CHANNELS_GROUPS, GRIDS, SIZES, crossed=2), ids=case_id)
def test_group_norm_to_tokens_matches_reference(dtype, channels_groups, grid_, size, device):
    channels, groups = channels_groups
    batch, h, w = size
    canvas, weight, bias = _inputs(batch, channels, grid_, (h, w), dtype, device, seed=channels)
    _check(canvas, weight, bias, grid_, groups, dtype)


def test_reads_a_channels_last_canvas_in_place(device):
    canvas, weight, bias = _inputs(2, 64, (2, 2), (3, 5), torch.float32, device, seed=1)
    _check(canvas.to(memory_format=torch.channels_last), weight, bias, (2, 2), 32, torch.float32)


def test_rejects_an_uneven_split(device):
    canvas, weight, bias = _inputs(1, 64, (2, 2), (3, 5), torch.float32, device, seed=2)
    with pytest.raises(ValueError, match="equal views"):
        group_norm_to_tokens(canvas, (4, 2), 32, weight, bias, EPS)
