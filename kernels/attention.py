"""Cross-view attention: at every spatial position and head, the V co-located view tokens attend to each other.

Design and limits:
    * q/k/v are the (N, heads, V, d) views the CVA makes of its Linear outputs (N, V, heads*d); the kernel reads
      them through their strides (no transposing copy; the last dim must have stride 1) and writes the output
      as (N, V, heads, d) memory, so ``out.transpose(1, 2).reshape(N, V, heads*d)`` in the CVA is free.
    * A program owns a block of (position, head) rows and keeps its V x d queries, the running softmax
      statistics and the V x d accumulator in registers; it streams the V keys/values of those rows once
      (online softmax, one key view per step, exp2). The V x V scores never exist as a matrix: attention over V
      views is 4*V^2*d FLOPs per 4*V*d values moved (V FLOPs per value: 4 for the 2x2 grid), so the kernel is
      bandwidth-bound and uses no tl.dot (whose 16-row minimum V = 4 could not fill anyway).
    * V <= 32 (the view-PE table size), any head dim <= 256 (masked to the next power of two: 40 -> 64,
      80 -> 128, 160 -> 256, so d = 40/80/160 waste 37.5% of the lanes but no memory traffic); fp32/fp16/bf16
      inputs, fp32 math, output in the input dtype; int32 offsets (tensors < 2**31 elements).
    * Tile sizes are a heuristic (``_launch.rows_per_program``), not autotuned.
    * The backward is a Triton kernel too: it recomputes the softmax statistics (no logsumexp is saved) and
      produces dq, dk, dv in one pass over the key views.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from imagpose.models import cva_ops

from ._launch import block, check_launch, rows_per_program

MAX_VIEWS = 32
MAX_HEAD_DIM = 256
LOG2E = 1.4426950408889634  # 1 / ln 2: softmax in base 2 (exp2)


def cross_view_attention_ref(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float,
                             upcast: bool = True) -> torch.Tensor:
    """PyTorch reference, the eager CVA op: ``softmax(Q K^T * scale) V`` over the views; (N, heads, V, d) -> same.

    ``upcast=True`` computes in fp32 and returns fp32 (the reference the kernel is held to);
    ``upcast=False`` computes in the input dtype, like the CVA's eager backend.
    """
    if upcast:
        query, key, value = query.float(), key.float(), value.float()
    return cva_ops.eager_attention(query, key, value, scale)


# ----------------------------------------------------------------------------- kernels
@triton.jit
def _load_rows(ptr, row_offsets, view_stride, views, dims, mask):
    """(rows, views, dims) tile of a (N, heads, V, d) tensor, as fp32."""
    offsets = row_offsets[:, None, None] + views[None, :, None] * view_stride + dims[None, None, :]
    return tl.load(ptr + offsets, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _cross_view_attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr,
    num_rows, num_heads, head_dim, qk_scale,  # qk_scale = scale / ln 2
    q_sn, q_sh, q_sv, k_sn, k_sh, k_sv, v_sn, v_sh, v_sv,  # strides of the (N, heads, V, d) inputs
    NUM_VIEWS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # rows are (position n, head h) pairs; output memory is (N, V, heads, d)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    n, h = rows // num_heads, rows % num_heads
    views, dims = tl.arange(0, BLOCK_V), tl.arange(0, BLOCK_D)
    row_ok, dim_ok = rows < num_rows, dims < head_dim
    tile_mask = row_ok[:, None, None] & (views < NUM_VIEWS)[None, :, None] & dim_ok[None, None, :]
    key_mask = row_ok[:, None] & dim_ok[None, :]

    q = _load_rows(q_ptr, n * q_sn + h * q_sh, q_sv, views, dims, tile_mask) * qk_scale  # (R, V, D)
    m_i = tl.full([BLOCK_R, BLOCK_V], float("-inf"), tl.float32)  # running max of the base-2 logits
    l_i = tl.zeros([BLOCK_R, BLOCK_V], tl.float32)  # running softmax denominator
    acc = tl.zeros([BLOCK_R, BLOCK_V, BLOCK_D], tl.float32)
    for j in tl.static_range(NUM_VIEWS):
        k_j = tl.load(k_ptr + (n * k_sn + h * k_sh + j * k_sv)[:, None] + dims[None, :], mask=key_mask,
                      other=0.0).to(tl.float32)  # (R, D)
        v_j = tl.load(v_ptr + (n * v_sn + h * v_sh + j * v_sv)[:, None] + dims[None, :], mask=key_mask,
                      other=0.0).to(tl.float32)
        # -- logits of every query view against key view j, then the online-softmax update
        s_j = tl.sum(q * k_j[:, None, :], axis=2)  # (R, V)
        m_new = tl.maximum(m_i, s_j)
        alpha = tl.exp2(m_i - m_new)
        p_j = tl.exp2(s_j - m_new)
        l_i = l_i * alpha + p_j
        acc = acc * alpha[:, :, None] + p_j[:, :, None] * v_j[:, None, :]
        m_i = m_new

    out = acc / l_i[:, :, None]
    out_offsets = ((n[:, None] * NUM_VIEWS + views[None, :]) * num_heads + h[:, None]) * head_dim
    tl.store(o_ptr + out_offsets[:, :, None] + dims[None, None, :], out.to(o_ptr.dtype.element_ty), mask=tile_mask)


@triton.jit
def _cross_view_attention_bwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, dq_ptr, dk_ptr, dv_ptr,
    num_rows, num_heads, head_dim, scale,
    q_sn, q_sh, q_sv, k_sn, k_sh, k_sv, v_sn, v_sh, v_sv, o_sn, o_sh, o_sv, do_sn, do_sh, do_sv,
    NUM_VIEWS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # S = scale Q K^T, P = softmax(S), O = P V;  dV = P^T dO,  dS = P * (dO V^T - rowsum(dO * O)),
    # dQ = scale dS K,  dK = scale dS^T Q.  Gradients are written as (N, V, heads, d) memory.
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    n, h = rows // num_heads, rows % num_heads
    views, dims = tl.arange(0, BLOCK_V), tl.arange(0, BLOCK_D)
    row_ok, dim_ok = rows < num_rows, dims < head_dim
    tile_mask = row_ok[:, None, None] & (views < NUM_VIEWS)[None, :, None] & dim_ok[None, None, :]
    key_mask = row_ok[:, None] & dim_ok[None, :]

    q = _load_rows(q_ptr, n * q_sn + h * q_sh, q_sv, views, dims, tile_mask)  # (R, V, D)
    d_out = _load_rows(do_ptr, n * do_sn + h * do_sh, do_sv, views, dims, tile_mask)
    out = _load_rows(o_ptr, n * o_sn + h * o_sh, o_sv, views, dims, tile_mask)
    delta = tl.sum(d_out * out, axis=2)  # (R, V)
    q_log2 = q * (scale * 1.4426950408889634)  # base-2 logits: scale / ln 2

    # -- pass 1: softmax statistics (base-2 max and denominator) of every query view
    m_i = tl.full([BLOCK_R, BLOCK_V], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R, BLOCK_V], tl.float32)
    for j in tl.static_range(NUM_VIEWS):
        k_j = tl.load(k_ptr + (n * k_sn + h * k_sh + j * k_sv)[:, None] + dims[None, :], mask=key_mask,
                      other=0.0).to(tl.float32)
        s_j = tl.sum(q_log2 * k_j[:, None, :], axis=2)
        m_new = tl.maximum(m_i, s_j)
        l_i = l_i * tl.exp2(m_i - m_new) + tl.exp2(s_j - m_new)
        m_i = m_new

    # -- pass 2: column j of P and dS gives dK_j, dV_j; dQ accumulates over j
    d_q = tl.zeros([BLOCK_R, BLOCK_V, BLOCK_D], tl.float32)
    grad_base = (n * NUM_VIEWS * num_heads + h) * head_dim  # (N, V, heads, d) memory, view 0
    for j in tl.static_range(NUM_VIEWS):
        k_j = tl.load(k_ptr + (n * k_sn + h * k_sh + j * k_sv)[:, None] + dims[None, :], mask=key_mask,
                      other=0.0).to(tl.float32)
        v_j = tl.load(v_ptr + (n * v_sn + h * v_sh + j * v_sv)[:, None] + dims[None, :], mask=key_mask,
                      other=0.0).to(tl.float32)
        # padded query views have dO = 0 and O = 0, so they add nothing below
        p_j = tl.exp2(tl.sum(q_log2 * k_j[:, None, :], axis=2) - m_i) / l_i  # (R, V) = P[:, :, j]
        d_p = tl.sum(d_out * v_j[:, None, :], axis=2)  # (R, V) = dP[:, :, j]
        d_s = p_j * (d_p - delta)
        d_q += d_s[:, :, None] * k_j[:, None, :]
        d_k = tl.sum(d_s[:, :, None] * q, axis=1) * scale  # (R, D)
        d_v = tl.sum(p_j[:, :, None] * d_out, axis=1)
        view_offsets = (grad_base + j * num_heads * head_dim)[:, None] + dims[None, :]
        tl.store(dk_ptr + view_offsets, d_k.to(dk_ptr.dtype.element_ty), mask=key_mask)
        tl.store(dv_ptr + view_offsets, d_v.to(dv_ptr.dtype.element_ty), mask=key_mask)

    dq_offsets = ((n[:, None] * NUM_VIEWS + views[None, :]) * num_heads + h[:, None]) * head_dim
    tl.store(dq_ptr + dq_offsets[:, :, None] + dims[None, None, :], (d_q * scale).to(dq_ptr.dtype.element_ty),
             mask=tile_mask)


# ----------------------------------------------------------------------------- layer 1: custom ops
def _grid_and_blocks(query: torch.Tensor):
    num_positions, num_heads, num_views, head_dim = query.shape
    block_v, block_d = block(num_views), block(head_dim)
    block_r = rows_per_program(block_v * block_d)
    grid = (triton.cdiv(num_positions * num_heads, block_r),)
    return grid, dict(NUM_VIEWS=num_views, BLOCK_R=block_r, BLOCK_V=block_v, BLOCK_D=block_d)


def _strides(*tensors: torch.Tensor) -> list[int]:
    return [s for t in tensors for s in t.stride()[:3]]


def _check_inputs(*tensors: torch.Tensor) -> None:
    check_launch(*tensors)
    query = tensors[0]
    if query.dim() != 4 or any(t.shape != query.shape for t in tensors):
        raise ValueError(f"cross-view attention expects equal (N, heads, V, d) tensors, got "
                         f"{[tuple(t.shape) for t in tensors]}")
    if any(t.stride(-1) != 1 for t in tensors):
        raise ValueError("cross-view attention needs stride 1 along the head dim")
    if query.shape[2] > MAX_VIEWS or query.shape[3] > MAX_HEAD_DIM:
        raise ValueError(f"cross-view attention supports V <= {MAX_VIEWS} and head_dim <= {MAX_HEAD_DIM}, "
                         f"got V={query.shape[2]}, head_dim={query.shape[3]}")


@torch.library.custom_op("imagpose::cross_view_attention_fwd", mutates_args=())
def cross_view_attention_fwd(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             scale: float) -> torch.Tensor:
    """(N, heads, V, d) strided q/k/v -> (N, V, heads, d) contiguous output."""
    _check_inputs(query, key, value)
    num_positions, num_heads, num_views, head_dim = query.shape
    out = query.new_empty(num_positions, num_views, num_heads, head_dim)
    grid, blocks = _grid_and_blocks(query)
    _cross_view_attention_fwd_kernel[grid](
        query, key, value, out, num_positions * num_heads, num_heads, head_dim, scale * LOG2E,
        *_strides(query, key, value), **blocks,
    )
    return out


@cross_view_attention_fwd.register_fake
def _(query, key, value, scale):
    num_positions, num_heads, num_views, head_dim = query.shape
    return query.new_empty(num_positions, num_views, num_heads, head_dim)


@torch.library.custom_op("imagpose::cross_view_attention_bwd", mutates_args=())
def cross_view_attention_bwd(grad_out: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             out: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All (N, heads, V, d) strided -> dq, dk, dv as (N, V, heads, d) contiguous tensors."""
    _check_inputs(query, key, value, out, grad_out)
    num_positions, num_heads, num_views, head_dim = query.shape
    grads = [query.new_empty(num_positions, num_views, num_heads, head_dim) for _ in range(3)]
    grid, blocks = _grid_and_blocks(query)
    _cross_view_attention_bwd_kernel[grid](
        query, key, value, out, grad_out, *grads, num_positions * num_heads, num_heads, head_dim, scale,
        *_strides(query, key, value, out, grad_out), **blocks,
    )
    return tuple(grads)


@cross_view_attention_bwd.register_fake
def _(grad_out, query, key, value, out, scale):
    num_positions, num_heads, num_views, head_dim = query.shape
    return tuple(query.new_empty(num_positions, num_views, num_heads, head_dim) for _ in range(3))


# ----------------------------------------------------------------------------- layer 2: autograd
class CrossViewAttentionFunction(torch.autograd.Function):
    """Forward and backward both run Triton kernels; tensors cross the boundary as (N, heads, V, d) views."""

    @staticmethod
    def forward(ctx, query, key, value, scale):
        out = cross_view_attention_fwd(query, key, value, scale).transpose(1, 2)  # (N, heads, V, d) view
        ctx.save_for_backward(query, key, value, out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, out = ctx.saved_tensors
        if grad_out.stride(-1) != 1:
            grad_out = grad_out.contiguous()
        grads = cross_view_attention_bwd(grad_out, query, key, value, out, ctx.scale)
        return (*(g.transpose(1, 2) for g in grads), None)


# ----------------------------------------------------------------------------- layer 3: public function
def cross_view_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(Q K^T * scale) V`` over the view axis, fused in one Triton kernel (differentiable).

    Args:
        query, key, value: ``(N, heads, V, head_dim)`` with stride 1 along ``head_dim``; N = batch * h * w
            spatial positions, V <= 32 views, head_dim <= 256. Typically ``x.reshape(N, V, heads, d)
            .transpose(1, 2)`` of a Linear output, read in place.
        scale: softmax scale (``head_dim ** -0.5`` in the CVA).
    Returns:
        ``(N, heads, V, head_dim)`` in the input dtype, a view of ``(N, V, heads, head_dim)`` memory: the
        CVA's following ``transpose(1, 2).reshape(N, V, heads * head_dim)`` is free.
    """
    return CrossViewAttentionFunction.apply(query, key, value, scale)
