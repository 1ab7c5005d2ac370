"""Fused LayerNorm + sinusoidal view position encoding on CVA tokens: ``LayerNorm(x) + pe[v]``.

In the CVA every attention sub-block starts with ``norm(tokens)`` followed by ``+ pe[:, :V]`` inside the
attention module; this kernel does both in one read and one write of the (N, V, C) tokens.
Design and limits: one program normalises a block of token rows, each row whole in registers (C <= 8192,
padded to a power of two: 320 -> 512, 640/1280 -> 1024/2048), two-pass mean/variance in fp32; row r is view
r % V, so the PE row is a gather from the (max_views, C) table. Affine weight and bias are required, the PE
is optional. fp32/fp16/bf16 tokens, fp32 math, output in the token dtype; int32 offsets.
The backward recomputes the PyTorch reference under autograd (no Triton backward kernel); the PE table is a
buffer and gets no gradient.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from imagpose.models import cva_ops

from ._autograd import reference_grads
from ._launch import block, check_launch, rows_per_program

MAX_CHANNELS = 8192


def layer_norm_view_pe_ref(tokens: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                           pe: torch.Tensor | None, upcast: bool = True) -> torch.Tensor:
    """PyTorch reference, the eager CVA op: tokens (N, V, C), pe (1, max_views, C) or None -> (N, V, C).

    ``upcast=True`` computes in fp32 and returns fp32; ``upcast=False`` computes in the input dtype.
    """
    if upcast:
        tokens, weight, bias = tokens.float(), weight.float(), bias.float()
        pe = pe.float() if pe is not None else None
    norm = partial(F.layer_norm, normalized_shape=weight.shape, weight=weight, bias=bias, eps=eps)
    return cva_ops.layer_norm_view_pe(tokens, norm, pe)


# ----------------------------------------------------------------------------- kernel
@triton.jit
def _layer_norm_view_pe_kernel(
    x_ptr, weight_ptr, bias_ptr, pe_ptr, out_ptr,
    num_rows, channels, eps,
    s_n, s_v, s_c,  # token strides; the output is contiguous (N, V, C)
    NUM_VIEWS: tl.constexpr, HAS_PE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # row = n * V + v
    chans = tl.arange(0, BLOCK_C)
    view = rows % NUM_VIEWS
    chan_ok = chans < channels
    mask = (rows < num_rows)[:, None] & chan_ok[None, :]

    offsets = ((rows // NUM_VIEWS) * s_n + view * s_v)[:, None] + chans[None, :] * s_c
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)  # (R, C)
    mean = tl.sum(x, axis=1) / channels
    centred = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / channels + eps)
    weight = tl.load(weight_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)
    out = centred * rstd[:, None] * weight[None, :] + bias[None, :]
    if HAS_PE:  # sinusoidal view position encoding, row v of the (max_views, C) table
        out += tl.load(pe_ptr + view[:, None] * channels + chans[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows[:, None] * channels + chans[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- layer 1: custom op
def _check_inputs(tokens, weight, bias, pe):
    check_launch(tokens, weight, bias, *([pe] if pe is not None else []))
    if tokens.dim() != 3 or tokens.shape[-1] > MAX_CHANNELS:
        raise ValueError(f"tokens must be (N, V, C) with C <= {MAX_CHANNELS}, got {tuple(tokens.shape)}")
    channels = tokens.shape[-1]
    if weight.shape != (channels,) or bias.shape != (channels,):
        raise ValueError(f"LayerNorm weight/bias must be ({channels},), got {tuple(weight.shape)}")
    if pe is not None and (pe.dim() != 3 or pe.shape[-1] != channels):
        raise ValueError(f"the view PE table must be (1, max_views, {channels}), got {tuple(pe.shape)}")
    if pe is not None and tokens.shape[1] > pe.shape[1]:
        raise ValueError(f"The grid has {tokens.shape[1]} views but the CVA view position encoding supports at "
                         f"most {pe.shape[1]}; use a smaller grid.")


@torch.library.custom_op("imagpose::layer_norm_view_pe", mutates_args=())
def layer_norm_view_pe_op(tokens: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                          pe: torch.Tensor | None) -> torch.Tensor:
    """tokens (N, V, C), any strides -> LayerNorm(tokens) + pe[:, :V], contiguous (N, V, C)."""
    _check_inputs(tokens, weight, bias, pe)
    num_positions, num_views, channels = tokens.shape
    out = tokens.new_empty(num_positions, num_views, channels)
    pe_rows = pe[0].contiguous() if pe is not None else out  # (max_views, C); unused when there is no PE
    block_c = block(channels)
    block_r = rows_per_program(block_c)
    _layer_norm_view_pe_kernel[(triton.cdiv(out.shape[0] * num_views, block_r),)](
        tokens, weight, bias, pe_rows, out, num_positions * num_views, channels, eps, *tokens.stride(),
        NUM_VIEWS=num_views, HAS_PE=pe is not None, BLOCK_R=block_r, BLOCK_C=block_c,
    )
    return out


@layer_norm_view_pe_op.register_fake
def _(tokens, weight, bias, eps, pe):
    return tokens.new_empty(tokens.shape)


# ----------------------------------------------------------------------------- layer 2: autograd
class LayerNormViewPEFunction(torch.autograd.Function):
    """Triton forward; the backward recomputes :func:`layer_norm_view_pe_ref` (fp32) under autograd."""

    @staticmethod
    def forward(ctx, tokens, weight, bias, eps, pe):
        ctx.save_for_backward(tokens, weight, bias, pe)
        ctx.eps = eps
        return layer_norm_view_pe_op(tokens, weight, bias, eps, pe)

    @staticmethod
    def backward(ctx, grad_out):
        tokens, weight, bias, pe = ctx.saved_tensors

        def reference(tokens, weight, bias):
            return layer_norm_view_pe_ref(tokens, weight, bias, ctx.eps, pe)

        d_tokens, d_weight, d_bias = reference_grads(reference, (tokens, weight, bias), ctx.needs_input_grad[:3],
                                                     grad_out)
        return d_tokens, d_weight, d_bias, None, None


# ----------------------------------------------------------------------------- layer 3: public function
def layer_norm_view_pe(tokens: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                       pe: torch.Tensor | None) -> torch.Tensor:
    """``LayerNorm(tokens) + pe[:, :V]`` in one pass (differentiable in tokens, weight and bias).

    Args:
        tokens: ``(N, V, C)`` CVA tokens (N = batch * h * w positions, V views), any strides; C <= 8192.
        weight, bias, eps: as ``nn.LayerNorm(C)`` (weight/bias ``(C,)``).
        pe: ``(1, max_views, C)`` view position-encoding table (V <= max_views), or None for no PE.
    Returns:
        ``(N, V, C)`` contiguous, in the token dtype.
    """
    return LayerNormViewPEFunction.apply(tokens, weight, bias, eps, pe)
