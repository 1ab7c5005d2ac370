"""imagpose.kernels: fused Triton kernels for the cross-view attention.

Each module holds one kernel with its PyTorch reference (``*_ref(..., upcast=...)``, the eager CVA op of
``imagpose.models.cva_ops`` computed in fp32 or in the input dtype), a ``torch.library`` custom op (namespace
``imagpose``, with a fake for torch.compile / torch.export), a ``torch.autograd.Function`` and the public function
re-exported here:

    group_norm_to_tokens   canvas (B, C, R*h, Cg*w) -> per-view GroupNorm -> tokens (B*h*w, V, C)
    layer_norm_view_pe     tokens -> LayerNorm(tokens) + view PE
    cross_view_attention   (N, heads, V, d) strided q/k/v -> attention over the V views
    tokens_to_canvas       tokens + canvas residual -> canvas

``backends.py`` registers the "triton" (and, when importable, "xformers") CVA backends when it is imported;
``imagpose.models.attention.get_cva_backend`` imports it the first time one of those names is requested.
On a machine without a GPU, set ``TRITON_INTERPRET=1`` before triton is first imported to run the kernels in
Triton's interpreter (slow; for tests). ``python -m imagpose.kernels.bench`` benchmarks them.

Importing the package itself has no side effects (the names above load on first use): Hugging Face's unrelated
``kernels`` package shares this folder's name, and transformers imports whatever ``kernels`` it finds to read its
version, so a stray import of this folder under that name must neither need triton nor register anything.
"""

import importlib

_PUBLIC = {
    "cross_view_attention": "attention", "cross_view_attention_ref": "attention",
    "group_norm_to_tokens": "group_norm", "group_norm_to_tokens_ref": "group_norm",
    "layer_norm_view_pe": "layer_norm", "layer_norm_view_pe_ref": "layer_norm",
    "tokens_to_canvas": "join", "tokens_to_canvas_ref": "join",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
