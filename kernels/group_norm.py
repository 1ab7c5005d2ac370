"""Fused CVA entry: split the canvas into views, GroupNorm each view, and write (B*h*w, V, C) tokens.

Replaces the eager ``canvas -> (B*V, C, h, w)`` permute copy, ``nn.GroupNorm`` and the ``-> (B*h*w, V, C)``
token permute copy with two kernels that read the canvas in place:
    1. statistics: one program per (batch, view, group) reduces its C/G channels x h x w tile of the canvas
       (small groups are batched several to a program) in two passes: mean, then the centred sum of squares
       (no E[x^2] - E[x]^2 cancellation). The second pass re-reads a group that was just read (~80 KB at the
       largest IMAGPose level), so it mostly hits L2.
    2. apply: one program per (batch, view, block of positions, block of channels) reads a canvas tile,
       normalises it with its group's statistics and the affine weight/bias, and writes token rows (channels
       contiguous).
Limits: canvas (B, C, R*h, Cg*w) with any strides and any R x Cg grid (V = R*Cg is a compile-time constant: one
specialisation per grid), C divisible by the number of groups, affine weight and bias required; fp32/fp16/bf16,
fp32 statistics and math, tokens in the canvas dtype; int32 offsets.
Traffic: the canvas is read twice from HBM (stats, apply) plus once from L2, the tokens written once.
The backward recomputes the PyTorch reference under autograd (no Triton backward kernel).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from imagpose.models import cva_ops

from ._autograd import reference_grads
from ._launch import block, check_launch, columns_per_program, rows_per_program


def group_norm_to_tokens_ref(canvas: torch.Tensor, grid: tuple[int, int], num_groups: int, weight: torch.Tensor,
                             bias: torch.Tensor, eps: float, upcast: bool = True) -> torch.Tensor:
    """PyTorch reference, the eager CVA op: canvas (B, C, R*h, Cg*w) -> tokens (B*h*w, V, C).

    ``upcast=True`` computes in fp32 and returns fp32; ``upcast=False`` computes in the input dtype.
    """
    if upcast:
        canvas, weight, bias = canvas.float(), weight.float(), bias.float()
    norm = partial(F.group_norm, num_groups=num_groups, weight=weight, bias=bias, eps=eps)
    return cva_ops.group_norm_to_tokens(canvas, grid, norm)


# ----------------------------------------------------------------------------- kernels
@triton.jit
def _view_group_stats_kernel(
    canvas_ptr, mean_ptr, rstd_ptr,
    num_groups, channels_per_group, h, w, eps,
    s_b, s_c, s_y, s_x,  # canvas strides
    NUM_VIEWS: tl.constexpr, GRID_COLS: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK: tl.constexpr,
):
    # program = (batch b, view v, block of groups); view v is canvas tile (v // GRID_COLS, v % GRID_COLS)
    batch_view = tl.program_id(0)
    batch, view = batch_view // NUM_VIEWS, batch_view % NUM_VIEWS
    groups = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
    group_ok = groups < num_groups
    base = (batch * s_b + groups * channels_per_group * s_c
            + (view // GRID_COLS) * h * s_y + (view % GRID_COLS) * w * s_x)  # (G,)
    hw = h * w
    group_size = channels_per_group * hw

    # -- pass 1: mean
    acc = tl.zeros([BLOCK_G, BLOCK], tl.float32)
    for start in range(0, group_size, BLOCK):
        e = start + tl.arange(0, BLOCK)  # flat (channel, y, x) index inside a group
        p = e % hw
        offsets = base[:, None] + ((e // hw) * s_c + (p // w) * s_y + (p % w) * s_x)[None, :]
        mask = group_ok[:, None] & (e < group_size)[None, :]
        acc += tl.load(canvas_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(acc, axis=1) / group_size

    # -- pass 2: variance around the mean (no E[x^2] - E[x]^2 cancellation)
    acc = tl.zeros([BLOCK_G, BLOCK], tl.float32)
    for start in range(0, group_size, BLOCK):
        e = start + tl.arange(0, BLOCK)
        p = e % hw
        offsets = base[:, None] + ((e // hw) * s_c + (p // w) * s_y + (p % w) * s_x)[None, :]
        mask = group_ok[:, None] & (e < group_size)[None, :]
        x = tl.load(canvas_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        centred = tl.where(mask, x - mean[:, None], 0.0)
        acc += centred * centred
    var = tl.sum(acc, axis=1) / group_size
    stats = batch_view * num_groups + groups
    tl.store(mean_ptr + stats, mean, mask=group_ok)
    tl.store(rstd_ptr + stats, 1.0 / tl.sqrt(var + eps), mask=group_ok)


@triton.jit
def _group_norm_to_tokens_kernel(
    canvas_ptr, weight_ptr, bias_ptr, mean_ptr, rstd_ptr, tokens_ptr,
    channels, channels_per_group, num_groups, h, w,
    s_b, s_c, s_y, s_x,  # canvas strides; tokens are contiguous (B*h*w, V, C)
    NUM_VIEWS: tl.constexpr, GRID_COLS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    batch_view = tl.program_id(0)
    batch, view = batch_view // NUM_VIEWS, batch_view % NUM_VIEWS
    positions = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)  # p = y * w + x inside the view
    chans = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    hw = h * w
    chan_ok = chans < channels
    mask = (positions < hw)[:, None] & chan_ok[None, :]

    y = (view // GRID_COLS) * h + positions // w  # canvas row and column of each position
    x = (view % GRID_COLS) * w + positions % w
    offsets = batch * s_b + chans[None, :] * s_c + (y * s_y + x * s_x)[:, None]
    vals = tl.load(canvas_ptr + offsets, mask=mask, other=0.0).to(tl.float32)  # (P, C)

    stats = batch_view * num_groups + chans // channels_per_group
    mean = tl.load(mean_ptr + stats, mask=chan_ok, other=0.0)
    scale = tl.load(rstd_ptr + stats, mask=chan_ok, other=0.0) * tl.load(weight_ptr + chans, mask=chan_ok,
                                                                          other=0.0).to(tl.float32)
    shift = tl.load(bias_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)
    out = (vals - mean[None, :]) * scale[None, :] + shift[None, :]

    token_rows = (batch * hw + positions) * NUM_VIEWS + view
    tl.store(tokens_ptr + token_rows[:, None] * channels + chans[None, :], out.to(tokens_ptr.dtype.element_ty),
             mask=mask)


# ----------------------------------------------------------------------------- layer 1: custom op
def _check_inputs(canvas, rows, cols, num_groups, weight, bias):
    check_launch(canvas, weight, bias)
    if canvas.dim() != 4 or canvas.shape[2] % rows or canvas.shape[3] % cols:
        raise ValueError(f"canvas {tuple(canvas.shape)} does not split into a {rows}x{cols} grid of equal views")
    channels = canvas.shape[1]
    if channels % num_groups or weight.shape != (channels,) or bias.shape != (channels,):
        raise ValueError(f"GroupNorm({num_groups}) needs channels ({channels}) divisible by the groups and "
                         f"(C,) weight/bias, got {tuple(weight.shape)} / {tuple(bias.shape)}")


@torch.library.custom_op("imagpose::group_norm_to_tokens", mutates_args=())
def group_norm_to_tokens_op(canvas: torch.Tensor, rows: int, cols: int, num_groups: int, weight: torch.Tensor,
                            bias: torch.Tensor, eps: float) -> torch.Tensor:
    """canvas (B, C, rows*h, cols*w) -> tokens (B*h*w, rows*cols, C), contiguous."""
    _check_inputs(canvas, rows, cols, num_groups, weight, bias)
    batch, channels, height, width = canvas.shape
    h, w, num_views = height // rows, width // cols, rows * cols
    tokens = canvas.new_empty(batch * h * w, num_views, channels)
    mean = canvas.new_empty(batch * num_views * num_groups, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    block_e = min(block(channels // num_groups * h * w), rows_per_program(1))  # elements of a group per step
    block_g = min(block(num_groups), rows_per_program(block_e))  # groups per program (1 at large sizes)
    _view_group_stats_kernel[(batch * num_views, triton.cdiv(num_groups, block_g))](
        canvas, mean, rstd, num_groups, channels // num_groups, h, w, eps, *canvas.stride(),
        NUM_VIEWS=num_views, GRID_COLS=cols, BLOCK_G=block_g, BLOCK=block_e,
    )
    block_c = columns_per_program(channels)
    block_p = min(block(h * w), rows_per_program(block_c))
    grid = (batch * num_views, triton.cdiv(h * w, block_p), triton.cdiv(channels, block_c))
    _group_norm_to_tokens_kernel[grid](
        canvas, weight, bias, mean, rstd, tokens, channels, channels // num_groups, num_groups, h, w,
        *canvas.stride(), NUM_VIEWS=num_views, GRID_COLS=cols, BLOCK_P=block_p, BLOCK_C=block_c,
    )
    return tokens


@group_norm_to_tokens_op.register_fake
def _(canvas, rows, cols, num_groups, weight, bias, eps):
    batch, channels, height, width = canvas.shape
    return canvas.new_empty(batch * (height // rows) * (width // cols), rows * cols, channels)


# ----------------------------------------------------------------------------- layer 2: autograd
class GroupNormToTokensFunction(torch.autograd.Function):
    """Triton forward; the backward recomputes :func:`group_norm_to_tokens_ref` (fp32) under autograd."""

    @staticmethod
    def forward(ctx, canvas, grid, num_groups, weight, bias, eps):
        ctx.save_for_backward(canvas, weight, bias)
        ctx.args = grid, num_groups, eps
        return group_norm_to_tokens_op(canvas, grid[0], grid[1], num_groups, weight, bias, eps)

    @staticmethod
    def backward(ctx, grad_tokens):
        grid, num_groups, eps = ctx.args
        needs = ctx.needs_input_grad

        def reference(canvas, weight, bias):
            return group_norm_to_tokens_ref(canvas, grid, num_groups, weight, bias, eps)

        d_canvas, d_weight, d_bias = reference_grads(reference, ctx.saved_tensors, (needs[0], needs[3], needs[4]),
                                                     grad_tokens)
        return d_canvas, None, None, d_weight, d_bias, None


# ----------------------------------------------------------------------------- layer 3: public function
def group_norm_to_tokens(canvas: torch.Tensor, grid: tuple[int, int], num_groups: int, weight: torch.Tensor,
                         bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-view GroupNorm of a canvas, written straight into the CVA token layout (differentiable).

    Args:
        canvas: ``(B, C, R*h, Cg*w)``, any strides; the views are its R x Cg tiles, row-major (TL, TR, BL, BR).
        grid: ``(R, Cg)``; V = R * Cg views.
        num_groups, weight, bias, eps: as ``nn.GroupNorm`` (weight/bias ``(C,)``); statistics per
            (batch, view, group).
    Returns:
        tokens ``(B*h*w, V, C)`` contiguous, in the canvas dtype: row ``(b*h*w + y*w + x)`` holds the V view
        tokens of position (y, x).
    """
    return GroupNormToTokensFunction.apply(canvas, tuple(grid), num_groups, weight, bias, eps)
