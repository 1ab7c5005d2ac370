"""CVA attention backends provided by this package, registered in ``imagpose.models.attention`` on import.

    triton    :func:`imagpose.kernels.attention.cross_view_attention` (fused kernel, Triton backward);
              CUDA, or CPU under the Triton interpreter; fp32/fp16/bf16; V <= 32; head_dim <= 256.
              Not traceable by ONNX export (a Triton kernel has no ONNX form): export with eager or sdpa.
    xformers  ``xformers.ops.memory_efficient_attention``, registered only when xformers is importable;
              CUDA, fp16/bf16. The batch (N = B*h*w positions) is split into chunks of 65535 because
              xformers fails with "invalid configuration argument" from 65536 on (facebookresearch/xformers#845).
              Not traceable by ONNX export either.
"""

from __future__ import annotations

import importlib.util

import torch

from imagpose.models.attention import ViewAttentionBackend, register_view_attention_backend

from ._launch import device_problem
from .attention import MAX_HEAD_DIM, MAX_VIEWS, cross_view_attention

XFORMERS_MAX_BATCH = 65535


def _dtype_in(*dtypes: torch.dtype):
    names = "/".join(str(d).removeprefix("torch.") for d in dtypes)

    def constraint(query: torch.Tensor) -> str | None:
        return None if query.dtype in dtypes else f"dtype {query.dtype} is not one of {names}"

    return constraint


def _cuda(query: torch.Tensor) -> str | None:
    return None if query.device.type == "cuda" else f"needs a CUDA tensor, got {query.device.type}"


def _views_and_head_dim(query: torch.Tensor) -> str | None:
    num_views, head_dim = query.shape[2], query.shape[3]
    if num_views > MAX_VIEWS or head_dim > MAX_HEAD_DIM:
        return f"V={num_views}, head_dim={head_dim}: the kernel supports V <= {MAX_VIEWS}, head_dim <= {MAX_HEAD_DIM}"
    return None


def xformers_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """(N, heads, V, d) -> (N, heads, V, d) through xformers, in chunks of at most 65535 positions."""
    from xformers.ops import memory_efficient_attention

    # xformers takes (batch, seq, heads, d): the transposes undo the CVA's head split views, no copy
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    chunks = [memory_efficient_attention(q[i:i + XFORMERS_MAX_BATCH], k[i:i + XFORMERS_MAX_BATCH],
                                         v[i:i + XFORMERS_MAX_BATCH], scale=scale)
              for i in range(0, q.shape[0], XFORMERS_MAX_BATCH)]
    out = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
    return out.transpose(1, 2)


TRITON_BACKEND = ViewAttentionBackend(
    "triton", cross_view_attention,
    constraints=(device_problem, _dtype_in(torch.float32, torch.float16, torch.bfloat16), _views_and_head_dim),
    traceable=False,  # the registry refuses it inside ONNX export
)
XFORMERS_BACKEND = ViewAttentionBackend(
    "xformers", xformers_attention,
    constraints=(_cuda, _dtype_in(torch.float16, torch.bfloat16)),
    traceable=False,
)


def register_backends() -> None:
    """Register "triton", and "xformers" when it is importable."""
    register_view_attention_backend(TRITON_BACKEND)
    if importlib.util.find_spec("xformers") is not None:
        register_view_attention_backend(XFORMERS_BACKEND)
