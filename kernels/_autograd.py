"""Backward by recomputation through a PyTorch reference, for kernels that have no Triton backward."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def reference_grads(reference: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor],
                    needs_grad: Sequence[bool], grad_out: torch.Tensor) -> list[torch.Tensor | None]:
    """Gradients of ``reference(*inputs)`` for the inputs flagged in ``needs_grad`` (None for the others).

    The reference runs in fp32 (``upcast=True``) and its output is cast to ``grad_out``'s dtype, so the
    gradients come back in each input's dtype. ``torch.func.vjp`` (not ``torch.autograd.grad``) keeps the
    backward traceable by torch.compile.
    """
    _, vjp = torch.func.vjp(lambda *xs: reference(*xs).to(grad_out.dtype), *inputs)
    return [grad if needs else None for grad, needs in zip(vjp(grad_out), needs_grad)]
