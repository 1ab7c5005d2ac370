"""CVA backends provided by this package; importing this module registers them in imagpose.models.attention.

    triton    all four CVA ops as fused kernels: :func:`~imagpose.kernels.group_norm.group_norm_to_tokens`,
              :func:`~imagpose.kernels.layer_norm.layer_norm_view_pe`,
              :func:`~imagpose.kernels.attention.cross_view_attention` (Triton backward) and
              :func:`~imagpose.kernels.join.tokens_to_canvas`; no layout copies between them.
              CUDA, or CPU under the Triton interpreter; fp32/fp16/bf16; V <= 32; head_dim <= 256; C <= 8192.
              Not traceable by ONNX export (a Triton kernel has no ONNX form): export with eager or sdpa.
    xformers  ``xformers.ops.memory_efficient_attention`` for the attention, the PyTorch reference for the other
              ops; registered only when xformers is importable; CUDA, fp16/bf16. The batch (N = B*h*w positions)
              is split into chunks of 65535 because xformers fails with "invalid configuration argument" from
              65536 on (facebookresearch/xformers#845). Not traceable by ONNX export either.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from imagpose.models.attention import CVABackend, CVACall, register_cva_backend

from ._launch import device_problem
from .attention import MAX_HEAD_DIM, MAX_VIEWS, cross_view_attention
from .group_norm import group_norm_to_tokens
from .join import tokens_to_canvas
from .layer_norm import MAX_CHANNELS, layer_norm_view_pe

XFORMERS_MAX_BATCH = 65535


def _dtype_in(*dtypes: torch.dtype):
    names = "/".join(str(d).removeprefix("torch.") for d in dtypes)

    def constraint(call: CVACall) -> str | None:
        return None if call.dtype in dtypes else f"dtype {call.dtype} is not one of {names}"

    return constraint


def _triton_device(call: CVACall) -> str | None:
    return device_problem(call.device)


def _cuda(call: CVACall) -> str | None:
    return None if call.device.type == "cuda" else f"needs a CUDA tensor, got {call.device.type}"


def _kernel_sizes(call: CVACall) -> str | None:
    if call.num_views > MAX_VIEWS or call.head_dim > MAX_HEAD_DIM or call.channels > MAX_CHANNELS:
        return (f"V={call.num_views}, head_dim={call.head_dim}, C={call.channels}: the kernels support "
                f"V <= {MAX_VIEWS}, head_dim <= {MAX_HEAD_DIM}, C <= {MAX_CHANNELS}")
    return None


def triton_group_norm_to_tokens(canvas: torch.Tensor, grid: tuple[int, int], norm: nn.GroupNorm) -> torch.Tensor:
    """:func:`~imagpose.kernels.group_norm.group_norm_to_tokens` with the parameters of the CVA's GroupNorm."""
    return group_norm_to_tokens(canvas, grid, norm.num_groups, norm.weight, norm.bias, norm.eps)


def triton_layer_norm_view_pe(tokens: torch.Tensor, norm: nn.LayerNorm, pe: torch.Tensor | None) -> torch.Tensor:
    """:func:`~imagpose.kernels.layer_norm.layer_norm_view_pe` with the parameters of the sub-block's LayerNorm."""
    return layer_norm_view_pe(tokens, norm.weight, norm.bias, norm.eps, pe)


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


TRITON_BACKEND = CVABackend(
    "triton",
    attention=cross_view_attention,
    group_norm_to_tokens=triton_group_norm_to_tokens,
    layer_norm_view_pe=triton_layer_norm_view_pe,
    tokens_to_canvas=tokens_to_canvas,
    constraints=(_triton_device, _dtype_in(torch.float32, torch.float16, torch.bfloat16), _kernel_sizes),
    traceable=False,
)
XFORMERS_BACKEND = CVABackend(
    "xformers", attention=xformers_attention, constraints=(_cuda, _dtype_in(torch.float16, torch.bfloat16)),
    traceable=False,
)


def register_backends() -> None:
    """Register "triton", and "xformers" when it is importable."""
    register_cva_backend(TRITON_BACKEND)
    if importlib.util.find_spec("xformers") is not None:
        register_cva_backend(XFORMERS_BACKEND)


register_backends()
