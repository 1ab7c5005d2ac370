"""Cross-view attention (CVA), the paper's Sec. 3.4 / Fig. 4.

The official module is AnimateDiff's ``VanillaTemporalModule`` applied to the 2x2 canvas: the canvas feature
map is split into its views (the grid tiles, row-major: TL, TR, BL, BR), the views are treated as the
"frames" of a video, and every spatial position attends over its V co-located view tokens. Here the split is
a reshape/permute of the canvas (views adjacent in memory), not slice copies into a zero canvas, and any
R x C grid works (V = R * C <= ``max_views``, the size of the sinusoidal view-position table). With the
"triton" backend the same computation runs through fused kernels that read and write the canvas and token
layouts in place (``imagpose.kernels``, ``CrossViewTransformer._forward_fused``).

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

from .attention import view_attention


def sinusoidal_view_encoding(max_views: int, dim: int) -> torch.Tensor:
    """(1, max_views, dim) table: sin on even channels, cos on odd channels (AnimateDiff's PositionalEncoding)."""
    position = torch.arange(max_views).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    table = torch.zeros(1, max_views, dim)
    table[0, :, 0::2] = torch.sin(position * div_term)
    table[0, :, 1::2] = torch.cos(position * div_term)
    return table


class ViewPositionEncoding(nn.Module):
    def __init__(self, dim: int, max_views: int):
        super().__init__()
        self.register_buffer("pe", sinusoidal_view_encoding(max_views, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (N, V, C)
        num_views = tokens.shape[1]
        if num_views > self.pe.shape[1]:
            raise ValueError(
                f"The grid has {num_views} views but the CVA view position encoding supports at most "
                f"{self.pe.shape[1]}; use a smaller grid."
            )
        return tokens + self.pe[:, :num_views]


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
        self.backend = "eager"

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (N, V, C) -> (N, V, C)
        if self.pos_encoder is not None:
            tokens = self.pos_encoder(tokens)
        return self.attend(tokens)

    def attend(self, tokens: torch.Tensor) -> torch.Tensor:  # (N, V, C) tokens that already carry the view PE
        n, num_views, _ = tokens.shape

        def heads(x: torch.Tensor) -> torch.Tensor:  # (N, V, heads*d) -> (N, heads, V, d)
            return x.reshape(n, num_views, self.num_heads, -1).transpose(1, 2)

        out = view_attention(
            heads(self.to_q(tokens)), heads(self.to_k(tokens)), heads(self.to_v(tokens)), self.scale, self.backend
        )
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

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            tokens = attention(norm(tokens)) + tokens
        return self.ff(self.ff_norm(tokens)) + tokens


class CrossViewTransformer(nn.Module):
    def __init__(self, channels: int, num_heads: int, head_dim: int, num_layers: int, num_attention_blocks: int,
                 max_views: int, norm_groups: int, position_encoding: bool):
        super().__init__()
        inner_dim = num_heads * head_dim
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner_dim)
        self.transformer_blocks = nn.ModuleList(
            [CrossViewBlock(inner_dim, num_heads, head_dim, num_attention_blocks, max_views, position_encoding)
             for _ in range(num_layers)]
        )
        self.proj_out = nn.Linear(inner_dim, channels)
        self.backend = "eager"

    def forward(self, canvas: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        batch, channels, height, width = canvas.shape
        rows, cols = grid
        if height % rows or width % cols:
            raise ValueError(
                f"CVA cannot split a {height}x{width} feature map into a {rows}x{cols} grid of equal views; "
                "tile sizes must be multiples of 8 * 2**(UNet levels - 1) (the pipeline pads them for you)."
            )
        if self.backend == "triton":
            return self._forward_fused(canvas, grid)
        h, w, num_views = height // rows, width // cols, rows * cols
        # split: (B, C, R*h, Cg*w) -> (B, R, Cg, C, h, w) -> (B*V, C, h, w); GroupNorm statistics per view
        views = canvas.reshape(batch, channels, rows, h, cols, w).permute(0, 2, 4, 1, 3, 5)
        views = self.norm(views.reshape(batch * num_views, channels, h, w))
        # (B*V, C, h, w) -> (B, h, w, V, C) -> (B*h*w, V, C): one sequence of V view tokens per position
        tokens = views.reshape(batch, num_views, channels, h * w).permute(0, 3, 1, 2)
        tokens = self.proj_in(tokens.reshape(batch * h * w, num_views, channels))
        for block in self.transformer_blocks:
            tokens = block(tokens)
        tokens = self.proj_out(tokens)
        # join: (B*h*w, V, C) -> (B, h, w, R, Cg, C) -> (B, C, R*h, Cg*w); residual is the canvas input
        out = tokens.reshape(batch, h, w, rows, cols, channels).permute(0, 5, 3, 1, 4, 2)
        return out.reshape(batch, channels, height, width) + canvas

    def _forward_fused(self, canvas: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The "triton" backend: the same computation, with split + GroupNorm, every LayerNorm + view PE, the view
        attention and join + residual as fused Triton kernels (``imagpose.kernels``), no layout copies."""
        from imagpose.kernels import group_norm_to_tokens, layer_norm_view_pe, tokens_to_canvas

        if torch.onnx.is_in_onnx_export():
            raise ValueError("The 'triton' CVA backend runs Triton kernels, which ONNX export cannot trace; "
                             "set the 'eager' or 'sdpa' backend for export.")
        norm = self.norm
        tokens = group_norm_to_tokens(canvas, grid, norm.num_groups, norm.weight, norm.bias, norm.eps)  # (B*h*w, V, C)
        tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            for attention, layer_norm in zip(block.attention_blocks, block.norms):
                pe = attention.pos_encoder.pe if attention.pos_encoder is not None else None
                normed = layer_norm_view_pe(tokens, layer_norm.weight, layer_norm.bias, layer_norm.eps, pe)
                tokens = attention.attend(normed) + tokens
            tokens = block.ff(block.ff_norm(tokens)) + tokens
        return tokens_to_canvas(self.proj_out(tokens), canvas, grid)


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
        """Attention backend of every view attention; "triton" also switches the module to fused kernels."""
        self.temporal_transformer.backend = backend
        for module in self.modules():
            if isinstance(module, ViewSelfAttention):
                module.backend = backend

    def forward(self, canvas: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """canvas (B, C, H, W) -> (B, C, H, W)."""
        return self.temporal_transformer(canvas, grid)
