"""Fused CVA exit: CVA tokens (B*h*w, V, C) back onto the canvas (B, C, R*h, Cg*w) plus the canvas residual.

Replaces the eager ``(B*h*w, V, C) -> (B, C, R*h, Cg*w)`` permute copy and the residual add (three reads and
two writes of canvas-sized tensors) with one pass: read tokens and residual, write the output canvas.
Design and limits: one program per (batch, view, block of positions, block of channels); tokens and canvas
may have any strides, the output takes the residual's memory format; any R x Cg grid; fp32/fp16/bf16 with
tokens and residual in the same dtype, fp32 add; int32 offsets.
The backward recomputes the PyTorch reference under autograd (it is a pure layout permute of the gradient).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from imagpose.models import cva_ops

from ._autograd import reference_grads
from ._launch import block, check_launch, columns_per_program, rows_per_program


def tokens_to_canvas_ref(tokens: torch.Tensor, residual: torch.Tensor, grid: tuple[int, int],
                         upcast: bool = True) -> torch.Tensor:
    """PyTorch reference, the eager CVA op: tokens (B*h*w, V, C), residual (B, C, R*h, Cg*w) -> canvas.

    ``upcast=True`` computes in fp32 and returns fp32; ``upcast=False`` computes in the input dtype.
    """
    if upcast:
        tokens, residual = tokens.float(), residual.float()
    return cva_ops.tokens_to_canvas(tokens, residual, grid)


# ----------------------------------------------------------------------------- kernel
@triton.jit
def _tokens_to_canvas_kernel(
    tokens_ptr, residual_ptr, out_ptr,
    channels, h, w,
    t_n, t_v, t_c,  # token strides
    r_b, r_c, r_y, r_x,  # residual strides
    o_b, o_c, o_y, o_x,  # output strides
    NUM_VIEWS: tl.constexpr, GRID_COLS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    batch_view = tl.program_id(0)
    batch, view = batch_view // NUM_VIEWS, batch_view % NUM_VIEWS
    positions = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)  # p = y * w + x inside the view
    chans = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    hw = h * w
    mask = (positions < hw)[:, None] & (chans < channels)[None, :]

    token_offsets = ((batch * hw + positions) * t_n + view * t_v)[:, None] + chans[None, :] * t_c
    tokens = tl.load(tokens_ptr + token_offsets, mask=mask, other=0.0).to(tl.float32)  # (P, C)
    y = (view // GRID_COLS) * h + positions // w  # canvas row and column of each position
    x = (view % GRID_COLS) * w + positions % w
    residual = tl.load(residual_ptr + batch * r_b + chans[None, :] * r_c + (y * r_y + x * r_x)[:, None], mask=mask,
                       other=0.0).to(tl.float32)
    out_offsets = batch * o_b + chans[None, :] * o_c + (y * o_y + x * o_x)[:, None]
    tl.store(out_ptr + out_offsets, (tokens + residual).to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- layer 1: custom op
def _check_inputs(tokens, residual, rows, cols):
    check_launch(tokens, residual)
    if residual.dim() != 4 or residual.shape[2] % rows or residual.shape[3] % cols:
        raise ValueError(f"canvas {tuple(residual.shape)} does not split into a {rows}x{cols} grid of equal views")
    batch, channels, height, width = residual.shape
    expected = (batch * (height // rows) * (width // cols), rows * cols, channels)
    if tokens.shape != expected or tokens.dtype != residual.dtype:
        raise ValueError(f"tokens must be {expected} in {residual.dtype} for this canvas, "
                         f"got {tuple(tokens.shape)} in {tokens.dtype}")


@torch.library.custom_op("imagpose::tokens_to_canvas", mutates_args=())
def tokens_to_canvas_op(tokens: torch.Tensor, residual: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """tokens (B*h*w, V, C) + residual (B, C, rows*h, cols*w) -> canvas like ``residual``."""
    _check_inputs(tokens, residual, rows, cols)
    batch, channels, height, width = residual.shape
    h, w, num_views = height // rows, width // cols, rows * cols
    out = torch.empty_like(residual)
    block_c = columns_per_program(channels)
    block_p = min(block(h * w), rows_per_program(block_c))
    grid = (batch * num_views, triton.cdiv(h * w, block_p), triton.cdiv(channels, block_c))
    _tokens_to_canvas_kernel[grid](
        tokens, residual, out, channels, h, w, *tokens.stride(), *residual.stride(), *out.stride(),
        NUM_VIEWS=num_views, GRID_COLS=cols, BLOCK_P=block_p, BLOCK_C=block_c,
    )
    return out


@tokens_to_canvas_op.register_fake
def _(tokens, residual, rows, cols):
    return torch.empty_like(residual)


# ----------------------------------------------------------------------------- layer 2: autograd
class TokensToCanvasFunction(torch.autograd.Function):
    """Triton forward; the backward recomputes :func:`tokens_to_canvas_ref` under autograd (a permute)."""

    @staticmethod
    def forward(ctx, tokens, residual, grid):
        ctx.save_for_backward(tokens, residual)
        ctx.grid = grid
        return tokens_to_canvas_op(tokens, residual, grid[0], grid[1])

    @staticmethod
    def backward(ctx, grad_out):
        def reference(tokens, residual):
            return tokens_to_canvas_ref(tokens, residual, ctx.grid)

        d_tokens, d_residual = reference_grads(reference, ctx.saved_tensors, ctx.needs_input_grad[:2], grad_out)
        return d_tokens, d_residual, None


# ----------------------------------------------------------------------------- layer 3: public function
def tokens_to_canvas(tokens: torch.Tensor, residual: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Join the CVA tokens back into the canvas and add the residual, in one pass (differentiable).

    Args:
        tokens: ``(B*h*w, V, C)``, row ``(b*h*w + y*w + x)`` holding the V view tokens of position (y, x).
        residual: ``(B, C, R*h, Cg*w)`` canvas (the CVA input), same dtype as ``tokens``.
        grid: ``(R, Cg)``; view v is canvas tile ``(v // Cg, v % Cg)``, V = R * Cg.
    Returns:
        ``(B, C, R*h, Cg*w)`` = tokens laid out on the canvas + residual, in the residual's memory format.
    """
    return TokensToCanvasFunction.apply(tokens, residual, tuple(grid))
