"""The CVA backend registry: which implementation of the cross-view attention's ops a CVA module runs.

One CVA forward (``cva.CrossViewTransformer.forward``) calls four ops, and a backend supplies all four:
``group_norm_to_tokens``, ``layer_norm_view_pe``, ``attention`` and ``tokens_to_canvas`` (shapes in ``cva_ops``).
A backend that only replaces the attention keeps the PyTorch reference ops for the other three. Backends declare
their constraints; a CVA forward checks them before it runs anything and raises
:class:`~imagpose.errors.InvalidArgumentError` naming the unmet one: there is no silent fallback, so a benchmark
can trust which path ran. A backend that is not traceable is refused inside ONNX export.

Backends registered here:
    eager  the PyTorch reference ops (the official code's computation, in the input dtype)
    sdpa   the reference ops with ``torch.nn.functional.scaled_dot_product_attention``

Other imagpose packages add backends with :func:`register_cva_backend`; ``PROVIDERS`` names the module whose import
registers each of them, and :func:`get_cva_backend` imports it the first time one of its names is requested.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InvalidArgumentError, MissingDependencyError
from . import cva_ops

DEFAULT_CVA_BACKEND = "eager"

# Backends provided outside the core, like entry points: backend name -> module whose import registers it.
PROVIDERS = {"triton": "imagpose.kernels.backends", "xformers": "imagpose.kernels.backends"}

# canvas (B, C, R*h, Cg*w), grid (R, Cg), the CVA's GroupNorm -> tokens (B*h*w, V, C)
GroupNormToTokensFn = Callable[[torch.Tensor, tuple[int, int], nn.GroupNorm], torch.Tensor]
# tokens (N, V, C), the sub-block's LayerNorm, pe (1, max_views, C) or None -> (N, V, C)
LayerNormViewPEFn = Callable[[torch.Tensor, nn.LayerNorm, "torch.Tensor | None"], torch.Tensor]
# q, k, v (N, heads, V, head_dim), scale -> (N, heads, V, head_dim)
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]
# tokens (B*h*w, V, C), residual canvas (B, C, R*h, Cg*w), grid (R, Cg) -> canvas (B, C, R*h, Cg*w)
TokensToCanvasFn = Callable[[torch.Tensor, torch.Tensor, tuple[int, int]], torch.Tensor]


@dataclass(frozen=True)
class CVACall:
    """What a backend's constraints see of one CVA forward."""

    device: torch.device
    dtype: torch.dtype  # the canvas dtype
    num_views: int  # V = R * Cg
    channels: int  # token width (the CVA's inner dim)
    head_dim: int


ConstraintFn = Callable[[CVACall], "str | None"]  # an explanation when the call is not supported, else None


@dataclass(frozen=True)
class CVABackend:
    """A named implementation of the CVA's four ops plus the constraints it declares."""

    name: str
    attention: AttentionFn
    group_norm_to_tokens: GroupNormToTokensFn = cva_ops.group_norm_to_tokens
    layer_norm_view_pe: LayerNormViewPEFn = cva_ops.layer_norm_view_pe
    tokens_to_canvas: TokensToCanvasFn = cva_ops.tokens_to_canvas
    constraints: tuple[ConstraintFn, ...] = ()
    traceable: bool = True  # usable inside torch.onnx.export graphs

    def check(self, call: CVACall) -> None:
        """Raise InvalidArgumentError when this backend cannot run ``call`` (or cannot be exported right now)."""
        if not self.traceable and torch.onnx.is_in_onnx_export():
            traceable = ", ".join(name for name in cva_backends() if _BACKENDS[name].traceable)
            raise InvalidArgumentError(
                f"The CVA backend {self.name!r} has no ONNX form; export with a traceable backend ({traceable}): "
                "unet.set_cva_backend(name) before the export."
            )
        for constraint in self.constraints:
            problem = constraint(call)
            if problem is not None:
                raise InvalidArgumentError(f"The CVA backend {self.name!r} cannot run this call: {problem}; "
                                           "choose another backend with unet.set_cva_backend(name).")


_BACKENDS: dict[str, CVABackend] = {}


def register_cva_backend(backend: CVABackend) -> None:
    """Register ``backend`` under its name; registering the same backend again is a no-op."""
    registered = _BACKENDS.get(backend.name)
    if registered is not None and registered != backend:
        # e.g. one package loaded under two import names: its functions are distinct objects
        raise ValueError(f"A different CVA backend is already registered as {backend.name!r} (attention from "
                         f"{registered.attention.__module__}, now from {backend.attention.__module__}).")
    _BACKENDS[backend.name] = backend


def cva_backends() -> list[str]:
    """Names of the registered backends (those of ``PROVIDERS`` once their module is imported)."""
    return sorted(_BACKENDS)


def get_cva_backend(name: str) -> CVABackend:
    if name not in _BACKENDS and name in PROVIDERS:
        try:
            importlib.import_module(PROVIDERS[name])
        except ModuleNotFoundError as error:  # the provider's own dependency (triton) is not installed
            raise MissingDependencyError(
                f"The CVA backend {name!r} needs the {error.name!r} package: pip install -c constraints.txt "
                "'imagpose[kernels]'.") from error
        if name not in _BACKENDS:
            raise MissingDependencyError(
                f"The CVA backend {name!r} is not available: {PROVIDERS[name]} registers it only when the package "
                f"of the same name is installed; install it or choose one of {', '.join(cva_backends())}."
            )
    if name not in _BACKENDS:
        available = sorted(set(_BACKENDS) | set(PROVIDERS))
        raise InvalidArgumentError(f"Unknown CVA backend {name!r}; available: {', '.join(available)}.")
    return _BACKENDS[name]


register_cva_backend(CVABackend(DEFAULT_CVA_BACKEND, cva_ops.eager_attention))
register_cva_backend(CVABackend("sdpa", cva_ops.sdpa_attention))
