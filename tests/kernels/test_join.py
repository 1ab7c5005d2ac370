"""Fused join (tokens back onto the canvas) + residual vs its fp32 reference (= the eager CVA code)."""

import pytest
import torch

from imagpose.kernels.join import tokens_to_canvas, tokens_to_canvas_ref

from .parity import DTYPES, assert_within_torch_error, case_id, grads, grid

GRIDS = ((2, 2), (2, 3))
SIZES = ((1, 3, 5), (2, 5, 7), (8, 3, 1))  # (batch, h, w) of each view
CHANNELS = (40, 64)


def _inputs(batch, channels, grid_, tile, dtype, device, seed):
    generator = torch.Generator().manual_seed(seed)
    (rows, cols), (h, w) = grid_, tile
    tokens = torch.randn(batch * h * w, rows * cols, channels, generator=generator)
    canvas = torch.randn(batch, channels, rows * h, cols * w, generator=generator)
    return tokens.to(device, dtype), canvas.to(device, dtype)


def _check(tokens, canvas, grid_, dtype):
    inputs = [t.detach().requires_grad_() for t in (tokens, canvas)]
    ref_inputs = [t.detach().float().requires_grad_() for t in inputs]
    out = tokens_to_canvas(*inputs, grid_)
    out_ref = tokens_to_canvas_ref(*ref_inputs, grid_)
    out_pt = tokens_to_canvas_ref(*inputs, grid_, upcast=False)
    assert out.shape == canvas.shape and out.dtype == dtype
    assert_within_torch_error("canvas", out, out_pt, out_ref, dtype)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(out.device)
    for name, g, g_ref, g_pt in zip(("dtokens", "dresidual"), grads(out, inputs, grad_out),
                                    grads(out_ref, ref_inputs, grad_out), grads(out_pt, inputs, grad_out)):
        assert_within_torch_error(name, g, g_pt, g_ref, dtype, factor=3.0)


@pytest.mark.parametrize("dtype, grid_, size, channels", grid(DTYPES, GRIDS, SIZES, CHANNELS, crossed=2),
                         ids=case_id)
def test_tokens_to_canvas_matches_reference(dtype, grid_, size, channels, device):
    batch, h, w = size
    _check(*_inputs(batch, channels, grid_, (h, w), dtype, device, seed=channels), grid_, dtype)


def test_keeps_a_channels_last_residual(device):
    tokens, canvas = _inputs(2, 64, (2, 2), (3, 5), torch.float32, device, seed=1)
    canvas = canvas.to(memory_format=torch.channels_last)
    out = tokens_to_canvas(tokens, canvas, (2, 2))
    assert out.is_contiguous(memory_format=torch.channels_last)
    _check(tokens, canvas, (2, 2), torch.float32)


def test_rejects_tokens_that_do_not_fit_the_canvas(device):
    tokens, canvas = _inputs(1, 64, (2, 2), (3, 5), torch.float32, device, seed=2)
    with pytest.raises(ValueError, match="tokens must be"):
        tokens_to_canvas(tokens[:-1], canvas, (2, 2))
