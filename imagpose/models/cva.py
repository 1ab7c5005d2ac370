"""Cross-view attention (CVA), the paper's Sec. 3.4 / Fig. 4.

The official module is AnimateDiff's ``VanillaTemporalModule`` applied to the 2x2 canvas: the canvas feature
map is split into its views (the grid tiles, row-major: TL, TR, BL, BR), the views are treated as the
"frames" of a video, and every spatial position attends over its V co-located view tokens. Here the split is
a reshape/permute of the canvas (views adjacent in memory), not slice copies into a zero canvas, and any
R x C grid works (V = R * C <= ``max_views``, the size of the sinusoidal view-position table).

The forward calls four ops (split + GroupNorm to tokens, LayerNorm + view PE, attention, join + residual) of the
module's CVA backend (``attention.py``, ``set_backend``); the default runs their PyTorch reference (``cva_ops.py``).

Notation (<variable> -> paper / official name):
    canvas     (B, C, R*h, C_g*w)   the global feature map F, one image per request
    views      (B*V, C, h, w)       the V local person features after "split"
    tokens     (B*h*w, V, C)        one sequence of V view tokens per spatial position ("(b d) f c")
    pe         (1, max_views, C)    sinusoidal view position encoding (``pos_encoder.pe``)

State-dict keys equal the official ``motion_modules.N.temporal_transformer.*`` keys, which is why the
submodule is called ``temporal_transformer``.
"""

from __future__ import annotations

import math

import torch
from diffusers.models.attention import FeedForward
from torch import nn

from ..errors import InvalidArgumentError
from .attention import DEFAULT_CVA_BACKEND, AttentionFn, CVABackend, CVACall, get_cva_backend


def sinusoidal_view_encoding(max_views: int, dim: int) -> torch.Tensor:
    """(1, max_views, dim) table: sin on even channels, cos on odd channels (AnimateDiff's PositionalEncoding)."""
    position = torch.arange(max_views).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    table = torch.zeros(1, max_views, dim)
    table[0, :, 0::2] = torch.sin(position * div_term)
    table[0, :, 1::2] = torch.cos(position * div_term)
    return table


class ViewPositionEncoding(nn.Module):
    """Holds the view PE table; the backend's ``layer_norm_view_pe`` adds its first V rows to the tokens."""

    def __init__(self, dim: int, max_views: int):
        super().__init__()
        self.register_buffer("pe", sinusoidal_view_encoding(max_views, dim))

    def table(self, num_views: int) -> torch.Tensor:
        """The whole (1, max_views, C) table, once it is known to cover ``num_views`` views."""
        if num_views > self.pe.shape[1]:
            raise InvalidArgumentError(
                f"The grid has {num_views} views but the CVA view position encoding supports at most "
                f"{self.pe.shape[1]}; use a smaller grid."
            )
        return self.pe


class ViewSelfAttention(nn.Module):
    """Self-attention over the view axis. q/k/v have no bias, ``to_out`` has one (official VersatileAttention)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, max_views: int, position_encoding: bool):
        super().__init__()
        inner_dim = num_heads * head_dim
        self.num_heads = num_heads
        self.scale = head_dim**-0.5
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_k = nn.Linear(dim, inner_dim, bias=False)
        self.to_v = nn.Linear(dim, inner_dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, dim), nn.Dropout(0.0)])
        self.pos_encoder = ViewPositionEncoding(dim, max_views) if position_encoding else None

    def forward(self, tokens: torch.Tensor, attention: AttentionFn) -> torch.Tensor:
        """tokens (N, V, C) that already carry the view PE -> (N, V, C); ``attention`` is the backend's op."""
        n, num_views, _ = tokens.shape

        def heads(x: torch.Tensor) -> torch.Tensor:  # (N, V, heads*d) -> (N, heads, V, d)
            return x.reshape(n, num_views, self.num_heads, -1).transpose(1, 2)

        out = attention(heads(self.to_q(tokens)), heads(self.to_k(tokens)), heads(self.to_v(tokens)), self.scale)
        out = out.transpose(1, 2).reshape(n, num_views, -1)
        return self.to_out[1](self.to_out[0](out))


class CrossViewBlock(nn.Module):
    """Pre-norm view self-attention sub-blocks with residuals, then a pre-norm GEGLU feed-forward."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, num_attention_blocks: int, max_views: int,
                 position_encoding: bool):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [ViewSelfAttention(dim, num_heads, head_dim, max_views, position_encoding)
             for _ in range(num_attention_blocks)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(num_attention_blocks)])
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, backend: CVABackend) -> torch.Tensor:  # (N, V, C) -> (N, V, C)
        num_views = tokens.shape[1]
        for attention, norm in zip(self.attention_blocks, self.norms):
            pe = attention.pos_encoder.table(num_views) if attention.pos_encoder is not None else None
            normed = backend.layer_norm_view_pe(tokens, norm, pe)
            tokens = attention(normed, backend.attention) + tokens
        return self.ff(self.ff_norm(tokens)) + tokens


class CrossViewTransformer(nn.Module):
    def __init__(self, channels: int, num_heads: int, head_dim: int, num_layers: int, num_attention_blocks: int,
                 max_views: int, norm_groups: int, position_encoding: bool):
        super().__init__()
        inner_dim = num_heads * head_dim
        self.head_dim = head_dim
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner_dim)
        self.transformer_blocks = nn.ModuleList(
            [CrossViewBlock(inner_dim, num_heads, head_dim, num_attention_blocks, max_views, position_encoding)
             for _ in range(num_layers)]
        )
        self.proj_out = nn.Linear(inner_dim, channels)
        self.backend = DEFAULT_CVA_BACKEND  # a registered name; the module stays a plain, picklable object

    def forward(self, canvas: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """canvas (B, C, R*h, Cg*w) -> (B, C, R*h, Cg*w), through the four ops of the backend ``self.backend``."""
        height, width = canvas.shape[-2:]
        rows, cols = grid
        if height % rows or width % cols:
            raise InvalidArgumentError(
                f"CVA cannot split a {height}x{width} feature map into a {rows}x{cols} grid of equal views; "
                "tile sizes must be multiples of 8 * 2**(UNet levels - 1) (the pipeline pads them for you)."
            )
        backend = get_cva_backend(self.backend)
        backend.check(CVACall(canvas.device, canvas.dtype, rows * cols, self.proj_in.out_features, self.head_dim))
        tokens = self.proj_in(backend.group_norm_to_tokens(canvas, grid, self.norm))  # (B*h*w, V, C)
        for block in self.transformer_blocks:
            tokens = block(tokens, backend)
        return backend.tokens_to_canvas(self.proj_out(tokens), canvas, grid)  # join + canvas residual


class CrossViewAttention(nn.Module):
    """One CVA module, placed after every (resnet -> spatial transformer) pair of the UNet."""

    def __init__(self, channels: int, num_heads: int = 8, num_layers: int = 1, num_attention_blocks: int = 2,
                 head_dim_div: int = 1, max_views: int = 32, norm_groups: int = 32, position_encoding: bool = True):
        super().__init__()
        head_dim = channels // num_heads // head_dim_div
        self.temporal_transformer = CrossViewTransformer(
            channels, num_heads, head_dim, num_layers, num_attention_blocks, max_views, norm_groups,
            position_encoding,
        )

    def set_backend(self, backend: str) -> None:
        """Run this module through the registered CVA backend of that name (``attention.cva_backends()``)."""
        get_cva_backend(backend)  # fail here on an unknown name, not at the next forward
        self.temporal_transformer.backend = backend

    def forward(self, canvas: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """canvas (B, C, H, W) -> (B, C, H, W)."""
        return self.temporal_transformer(canvas, grid)
