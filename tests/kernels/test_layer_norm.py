"""Fused LayerNorm + view position encoding vs its fp32 reference (= the eager CVA code)."""

import pytest
import torch

from imagpose.kernels.layer_norm import layer_norm_view_pe, layer_norm_view_pe_ref
from imagpose.models.cva import sinusoidal_view_encoding

from .parity import DTYPES, assert_within_torch_error, case_id, grads, grid

CHANNELS = (320, 64, 40)
VIEWS = (4, 6)
POSITIONS = (15, 70, 3)  # N = batch * h * w: 1x3x5, 2x5x7, 1x1x3
EPS = 1e-5


def _inputs(positions, views, channels, dtype, device, seed):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(positions, views, channels, generator=generator) * 2 + 0.5
    weight = torch.randn(channels, generator=generator)
    bias = torch.randn(channels, generator=generator)
    pe = sinusoidal_view_encoding(32, channels)
    return [t.to(device, dtype) for t in (tokens, weight, bias, pe)]


def _check(tokens, weight, bias, pe, dtype):
    inputs = [t.detach().requires_grad_() for t in (tokens, weight, bias)]
    ref_inputs = [t.detach().float().requires_grad_() for t in inputs]
    out = layer_norm_view_pe(*inputs, EPS, pe)
    out_ref = layer_norm_view_pe_ref(*ref_inputs, EPS, pe.float() if pe is not None else None)
    out_pt = layer_norm_view_pe_ref(*inputs, EPS, pe, upcast=False)
    assert out.shape == out_ref.shape and out.dtype == dtype and out.is_contiguous()
    assert_within_torch_error("out", out, out_pt, out_ref, dtype)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(out.device)
    for name, g, g_ref, g_pt in zip(("dtokens", "dweight", "dbias"), grads(out, inputs, grad_out),
                                    grads(out_ref, ref_inputs, grad_out), grads(out_pt, inputs, grad_out)):
        assert_within_torch_error(name, g, g_pt, g_ref, dtype, factor=3.0)


@pytest.mark.parametrize("dtype, channels, views, positions", grid(DTYPES, CHANNELS, VIEWS, POSITIONS, crossed=2),
                         ids=case_id)
def test_layer_norm_view_pe_matches_reference(dtype, channels, views, positions, device):
    _check(*_inputs(positions, views, channels, dtype, device, seed=channels), dtype)


def test_strided_tokens_and_no_position_encoding(device):
    tokens, weight, bias, _ = _inputs(15, 4, 64, torch.float32, device, seed=1)
    wide = torch.cat([tokens, tokens], dim=-1)[..., 64:]  # a non-contiguous (N, V, C) view
    _check(wide, weight, bias, None, torch.float32)


def test_refuses_more_views_than_the_table(device):
    tokens, weight, bias, pe = _inputs(3, 6, 64, torch.float32, device, seed=2)
    with pytest.raises(ValueError, match="at most 4"):
        layer_norm_view_pe(tokens, weight, bias, EPS, pe[:, :4])
