"""imagpose.kernels: fused Triton kernels for the cross-view attention.

Each module holds one kernel with its PyTorch reference (``*_ref(..., upcast=...)``, the eager CVA op of
``imagpose.models.cva_ops`` computed in fp32 or in the input dtype), a ``torch.library`` custom op (namespace
``imagpose``, with a fake for torch.compile / torch.export), a ``torch.autograd.Function`` and the public function
re-exported here:

    group_norm_to_tokens   canvas (B, C, R*h, Cg*w) -> per-view GroupNorm -> tokens (B*h*w, V, C)
    layer_norm_view_pe     tokens -> LayerNorm(tokens) + view PE
    cross_view_attention   (N, heads, V, d) strided q/k/v -> attention over the V views
    tokens_to_canvas       tokens + canvas residual -> canvas

Importing the package registers the "triton" (and, when importable, "xformers") CVA backends
(``backends.py``); ``imagpose.models.attention.get_cva_backend`` imports it when one of those names is requested.
On a machine without a GPU, set ``TRITON_INTERPRET=1`` before this package is first imported to run the kernels
in Triton's interpreter (slow; for tests). ``python -m imagpose.kernels.bench`` benchmarks them.
"""

try:
    import triton  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the install
    from imagpose.errors import MissingDependencyError

    raise MissingDependencyError("imagpose.kernels needs triton: pip install 'imagpose[kernels]'") from error

from .attention import cross_view_attention, cross_view_attention_ref
from .backends import register_backends
from .group_norm import group_norm_to_tokens, group_norm_to_tokens_ref
from .join import tokens_to_canvas, tokens_to_canvas_ref
from .layer_norm import layer_norm_view_pe, layer_norm_view_pe_ref

register_backends()

__all__ = [
    "cross_view_attention", "cross_view_attention_ref",
    "group_norm_to_tokens", "group_norm_to_tokens_ref",
    "layer_norm_view_pe", "layer_norm_view_pe_ref",
    "tokens_to_canvas", "tokens_to_canvas_ref",
]
