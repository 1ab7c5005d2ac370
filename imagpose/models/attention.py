"""Attention backends for the cross-view attention (CVA).

The CVA attends over the V co-located tokens of the V views at every spatial position, so its attention
call has a tiny sequence (V = 4 for the official 2x2 grid) and a huge batch (B * h * w). Every CVA module
calls :func:`view_attention`, which dispatches to a named backend. Backends declare their constraints and
raise ``ValueError`` when a call does not satisfy them: there is no silent fallback, so a benchmark can
trust which path ran.

Backends registered here:
    eager  plain ``softmax(q k^T * scale) v`` in the input dtype (the reference, the official processor)
    sdpa   ``torch.nn.functional.scaled_dot_product_attention``

Other packages (``imagpose.kernels``) add backends with :func:`register_view_attention_backend`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

# q, k, v: (N, heads, V, head_dim) -> (N, heads, V, head_dim)
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]
ConstraintFn = Callable[[torch.Tensor], "str | None"]


@dataclass(frozen=True)
class ViewAttentionBackend:
    """A named attention implementation plus the constraints it declares.

    ``constraints`` are functions of the query tensor that return an explanation string when the call is not
    supported, or ``None`` when it is.
    """

    name: str
    fn: AttentionFn
    constraints: tuple[ConstraintFn, ...] = field(default_factory=tuple)
    traceable: bool = True  # usable inside torch.onnx.export / torch.export graphs

    def check(self, query: torch.Tensor) -> None:
        for constraint in self.constraints:
            problem = constraint(query)
            if problem is not None:
                raise ValueError(f"CVA attention backend {self.name!r} cannot run this call: {problem}")


_BACKENDS: dict[str, ViewAttentionBackend] = {}


def register_view_attention_backend(backend: ViewAttentionBackend) -> None:
    _BACKENDS[backend.name] = backend


def view_attention_backends() -> list[str]:
    return sorted(_BACKENDS)


def get_view_attention_backend(name: str) -> ViewAttentionBackend:
    if name not in _BACKENDS and name in ("triton", "xformers"):
        import imagpose.kernels  # noqa: F401  (registers the Triton and, when installed, xformers backends)
    if name not in _BACKENDS:
        raise ValueError(
            f"Unknown CVA attention backend {name!r}; available: {', '.join(view_attention_backends())}."
        )
    return _BACKENDS[name]


def eager_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """Reference attention: ``softmax(Q K^T * scale) V``. Shapes (N, heads, V, head_dim)."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale  # (N, heads, V, V)
    return torch.matmul(scores.softmax(dim=-1), value)


def sdpa_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    return F.scaled_dot_product_attention(query, key, value, scale=scale)


register_view_attention_backend(ViewAttentionBackend("eager", eager_attention))
register_view_attention_backend(ViewAttentionBackend("sdpa", sdpa_attention))


def view_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, backend: str = "eager"
) -> torch.Tensor:
    """Attention over the view axis.

    Args:
        query, key, value: ``(N, heads, V, head_dim)``; N = batch * spatial positions, V = number of views.
        scale: softmax scale, ``head_dim ** -0.5`` in IMAGPose.
        backend: a registered backend name (see :func:`view_attention_backends`).
    Returns:
        ``(N, heads, V, head_dim)``.
    """
    impl = get_view_attention_backend(backend)
    if not impl.traceable and torch.onnx.is_in_onnx_export():
        raise ValueError(f"CVA attention backend {backend!r} has no ONNX form; export with the 'eager' or 'sdpa' "
                         "backend (unet.set_cva_backend).")
    impl.check(query)
    return impl.fn(query, key, value, scale)
