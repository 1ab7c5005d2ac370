"""Parity rule for the kernels (flash-attention's): the kernel's error against the fp32 reference may be at most
``factor`` times PyTorch's own error in the same dtype, plus a dtype floor (factor 2 for outputs, 3 for
gradients). Max and mean differences are printed before asserting, so a failure log explains itself.

``KERNEL_TESTS=full`` selects the exhaustive parameter grids; the default quick grids cover every value of
every axis at least once (the Triton interpreter is slow).
"""

import os
from itertools import product

import torch

FULL = os.environ.get("KERNEL_TESTS") == "full"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DTYPE_FLOOR = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def grid(*axes, crossed: int = 1) -> list[tuple]:
    """Test cases over the axes: their full product with KERNEL_TESTS=full; otherwise the product of the first
    ``crossed`` axes with the remaining axes cycling through their values (every value still appears)."""
    if FULL:
        return list(product(*axes))
    head = list(product(*axes[:crossed]))
    count = max(len(head), *(len(axis) for axis in axes[crossed:]))
    return [head[i % len(head)] + tuple(axis[i % len(axis)] for axis in axes[crossed:]) for i in range(count)]


def case_id(value) -> str:
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    return str(value)


def assert_within_torch_error(name: str, kernel: torch.Tensor, torch_lowp: torch.Tensor, reference: torch.Tensor,
                              dtype: torch.dtype, factor: float = 2.0) -> None:
    kernel_err = (kernel.float() - reference.float()).abs()
    torch_err = (torch_lowp.float() - reference.float()).abs()
    bound = factor * torch_err.max().item() + DTYPE_FLOOR[dtype]
    print(f"{name} [{str(dtype).removeprefix('torch.')}]: kernel max {kernel_err.max().item():.3e} "
          f"mean {kernel_err.mean().item():.3e} | torch max {torch_err.max().item():.3e} "
          f"mean {torch_err.mean().item():.3e} | bound {bound:.3e}")
    assert kernel_err.max().item() <= bound, f"{name}: kernel error {kernel_err.max().item():.3e} > {bound:.3e}"


def grads(output: torch.Tensor, inputs: list[torch.Tensor], grad_out: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(output, inputs, grad_out.to(output.dtype)))
