"""The "triton" and "xformers" CVA attention backends in the registry: constraints, refusals, chunking."""

import sys
import types

import pytest
import torch

import imagpose.kernels  # noqa: F401  (registers the backends)
from imagpose.kernels.backends import XFORMERS_BACKEND, XFORMERS_MAX_BATCH, xformers_attention
from imagpose.models.attention import (
    eager_attention,
    get_view_attention_backend,
    view_attention,
    view_attention_backends,
)


def _qkv(positions, views, heads, head_dim, dtype=torch.float32, device="cpu"):
    return [torch.randn(positions, views, heads * head_dim, dtype=dtype, device=device)
            .reshape(positions, views, heads, head_dim).transpose(1, 2) for _ in range(3)]


def test_triton_backend_is_registered_and_not_onnx_traceable(device):
    backend = get_view_attention_backend("triton")
    assert "triton" in view_attention_backends() and not backend.traceable
    q, k, v = _qkv(5, 4, 2, 8, device=device)
    torch.testing.assert_close(view_attention(q, k, v, 8**-0.5, "triton"), eager_attention(q, k, v, 8**-0.5))


@pytest.mark.parametrize("shape, dtype, match", [
    ((3, 4, 2, 8), torch.float64, "dtype torch.float64"),
    ((3, 33, 1, 8), torch.float32, "V=33"),
    ((3, 4, 1, 320), torch.float32, "head_dim=320"),
], ids=["float64", "33 views", "head_dim 320"])
def test_triton_backend_names_the_failed_constraint(shape, dtype, match, device):
    with pytest.raises(ValueError, match=f"backend 'triton' cannot run this call: .*{match}"):
        view_attention(*_qkv(*shape, dtype=dtype, device=device), 1.0, "triton")


def test_triton_backend_refuses_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="need a CUDA tensor"):
        view_attention(*_qkv(3, 4, 2, 8), 1.0, "triton")


def test_triton_backend_refuses_onnx_export(monkeypatch, device):
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    with pytest.raises(ValueError, match="export with the 'eager' or 'sdpa' backend"):
        view_attention(*_qkv(3, 4, 2, 8, device=device), 1.0, "triton")


def test_xformers_is_registered_exactly_when_importable():
    import importlib.util

    assert ("xformers" in view_attention_backends()) == (importlib.util.find_spec("xformers") is not None)
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        XFORMERS_BACKEND.check(_qkv(3, 4, 2, 8, torch.float16)[0])


def test_xformers_backend_chunks_the_batch_below_65536(monkeypatch):
    """xformers #845: batch >= 65536 fails on CUDA. A stand-in xformers records the chunks it is given."""
    chunks = []

    def memory_efficient_attention(q, k, v, scale):  # (batch, seq, heads, d), like xformers
        chunks.append(q.shape[0])
        return eager_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale).transpose(1, 2)

    ops = types.SimpleNamespace(memory_efficient_attention=memory_efficient_attention)
    monkeypatch.setitem(sys.modules, "xformers", types.SimpleNamespace(ops=ops))
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    q, k, v = _qkv(2 * XFORMERS_MAX_BATCH + 7, 2, 1, 2)
    out = xformers_attention(q, k, v, 0.5)
    assert chunks == [XFORMERS_MAX_BATCH, XFORMERS_MAX_BATCH, 7]
    torch.testing.assert_close(out, eager_attention(q, k, v, 0.5))
