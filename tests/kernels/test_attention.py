"""Cross-view attention kernel vs its fp32 reference, against PyTorch's own error in the same dtype."""

import pytest
import torch

from imagpose.kernels.attention import cross_view_attention, cross_view_attention_ref

from .parity import DTYPES, assert_within_torch_error, case_id, grads, grid

HEADS = 8
HEAD_DIMS = (40, 80, 160, 64)
VIEWS = (4, 6)
SIZES = ((1, 3, 5), (2, 5, 7), (8, 3, 1))  # (batch, h, w): N = batch * h * w positions, odd spatial sizes


def _linear_outputs(positions, views, heads, head_dim, dtype, device, seed):
    """q, k, v as the CVA has them: (N, heads, V, d) views of (N, V, heads*d) Linear outputs."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(positions, views, heads * head_dim, generator=generator).to(device, dtype)
            .reshape(positions, views, heads, head_dim).transpose(1, 2) for _ in range(3)]


def _check(qkv, dtype, with_grads=True):
    head_dim = qkv[0].shape[-1]
    scale = head_dim**-0.5
    qkv = [t.detach().requires_grad_(with_grads) for t in qkv]
    ref_inputs = [t.detach().float().requires_grad_(with_grads) for t in qkv]
    out = cross_view_attention(*qkv, scale)
    out_ref = cross_view_attention_ref(*ref_inputs, scale, upcast=True)
    out_pt = cross_view_attention_ref(*qkv, scale, upcast=False)
    assert out.shape == out_ref.shape and out.dtype == dtype
    assert_within_torch_error("out", out, out_pt, out_ref, dtype)
    if not with_grads:
        return
    grad_out = torch.randn(out_ref.shape, generator=torch.Generator().manual_seed(7)).to(out.device)
    for name, g, g_ref, g_pt in zip(("dq", "dk", "dv"), grads(out, qkv, grad_out),
                                    grads(out_ref, ref_inputs, grad_out), grads(out_pt, qkv, grad_out)):
        assert_within_torch_error(name, g, g_pt, g_ref, dtype, factor=3.0)


@pytest.mark.parametrize("dtype, head_dim, views, size", grid(DTYPES, HEAD_DIMS, VIEWS, SIZES, crossed=2),
                         ids=case_id)
def test_attention_matches_reference(dtype, head_dim, views, size, device):
    batch, h, w = size
    _check(_linear_outputs(batch * h * w, views, HEADS, head_dim, dtype, device, seed=head_dim), dtype)


def test_output_memory_makes_the_cva_reshape_free(device):
    q, k, v = _linear_outputs(15, 4, HEADS, 40, torch.float32, device, seed=0)
    out = cross_view_attention(q, k, v, 40**-0.5)
    merged = out.transpose(1, 2).reshape(15, 4, HEADS * 40)  # what the CVA does next
    assert merged.data_ptr() == out.data_ptr() and merged.is_contiguous()


@pytest.mark.parametrize("layout", ["contiguous (N, heads, V, d)", "32 views, 1 head"])
def test_other_layouts_and_the_view_limit(layout, device):
    if layout.startswith("contiguous"):
        qkv = [t.contiguous() for t in _linear_outputs(6, 6, 2, 59, torch.float32, device, seed=1)]
    else:
        qkv = _linear_outputs(5, 32, 1, 40, torch.float32, device, seed=2)
    _check(qkv, torch.float32)


def test_rejects_what_it_does_not_support(device):
    q, k, v = _linear_outputs(3, 33, 1, 8, torch.float32, device, seed=3)
    with pytest.raises(ValueError, match="V <= 32"):
        cross_view_attention(q, k, v, 1.0)
    q, k, v = _linear_outputs(3, 4, 2, 8, torch.float32, device, seed=3)
    with pytest.raises(ValueError, match="stride 1"):
        cross_view_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2), 1.0)
