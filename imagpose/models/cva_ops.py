"""The four ops of one cross-view attention (CVA) forward, in plain PyTorch: the reference every CVA backend is
held to, and what the "eager" backend runs (``imagpose.models.attention``).

Notation (see ``cva.py``): canvas (B, C, R*h, Cg*w) with its V = R * Cg views as row-major tiles (TL, TR, BL, BR);
tokens (B*h*w, V, C), one sequence of V view tokens per spatial position; q/k/v (N, heads, V, head_dim).

    group_norm_to_tokens   split the canvas into views, GroupNorm each view, lay the views out as tokens
    layer_norm_view_pe     LayerNorm(tokens) + view position encoding (the pre-norm of every attention sub-block)
    eager_attention        softmax(Q K^T * scale) V over the V views (the official processor)
    tokens_to_canvas       join the tokens back into the canvas and add the canvas residual

``sdpa_attention`` is PyTorch's fused ``scaled_dot_product_attention``: the same math, another summation order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# The CVA's nn.GroupNorm / nn.LayerNorm, called as is: a module keeps LayerNorm's normalized_shape a Python
# constant, which the TorchScript ONNX exporter needs (F.layer_norm(x, x.shape[-1:], ...) traces the shape).
# The kernels' references pass F.group_norm / F.layer_norm bound to explicit parameters instead.
Normalization = Callable[[torch.Tensor], torch.Tensor]


def group_norm_to_tokens(canvas: torch.Tensor, grid: tuple[int, int], norm: Normalization) -> torch.Tensor:
    """canvas (B, C, R*h, Cg*w) -> ``norm`` (the CVA's ``nn.GroupNorm``) per view -> tokens (B*h*w, V, C)."""
    batch, channels, height, width = canvas.shape
    rows, cols = grid
    h, w, num_views = height // rows, width // cols, rows * cols
    # split: (B, C, R*h, Cg*w) -> (B, R, Cg, C, h, w) -> (B*V, C, h, w); GroupNorm statistics per view
    views = canvas.reshape(batch, channels, rows, h, cols, w).permute(0, 2, 4, 1, 3, 5)
    views = norm(views.reshape(batch * num_views, channels, h, w))
    # (B*V, C, h, w) -> (B, h*w, V, C) -> (B*h*w, V, C): one sequence of V view tokens per position
    tokens = views.reshape(batch, num_views, channels, h * w).permute(0, 3, 1, 2)
    return tokens.reshape(batch * h * w, num_views, channels)


def layer_norm_view_pe(tokens: torch.Tensor, norm: Normalization, pe: torch.Tensor | None) -> torch.Tensor:
    """tokens (N, V, C) -> ``norm`` (the block's ``nn.LayerNorm``) + pe[:, :V]; pe is the (1, max_views, C) table,
    or None (no PE)."""
    out = norm(tokens)
    return out + pe[:, : tokens.shape[1]] if pe is not None else out


def eager_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(Q K^T * scale) V`` in the input dtype; (N, heads, V, head_dim) -> (N, heads, V, head_dim)."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale  # (N, heads, V, V)
    return torch.matmul(scores.softmax(dim=-1), value)


def sdpa_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """:func:`eager_attention` through ``F.scaled_dot_product_attention``."""
    return F.scaled_dot_product_attention(query, key, value, scale=scale)


def tokens_to_canvas(tokens: torch.Tensor, residual: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """tokens (B*h*w, V, C) back onto the canvas layout of ``residual`` (B, C, R*h, Cg*w), plus the residual."""
    batch, channels, height, width = residual.shape
    rows, cols = grid
    h, w = height // rows, width // cols
    # join: (B*h*w, V, C) -> (B, h, w, R, Cg, C) -> (B, C, R*h, Cg*w)
    out = tokens.reshape(batch, h, w, rows, cols, channels).permute(0, 5, 3, 1, 4, 2)
    return out.reshape(batch, channels, height, width) + residual
