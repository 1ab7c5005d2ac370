"""Launch helpers shared by the CVA kernels: where Triton can run, and how big a program's tile is."""

from __future__ import annotations

import os

import torch
import triton

# fp32 values in one program's working tile. On a GPU ~4k keeps the tile in registers (4 warps, 32 values per
# thread). The interpreter runs programs one after another in Python, so there fewer, larger programs are faster.
GPU_TILE = 4096
INTERPRETER_TILE = 1 << 16
MAX_OFFSET = 2**31  # element offsets are int32 inside the kernels


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1`` before the kernels load)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def device_problem(device: torch.device) -> str | None:
    """Why Triton cannot run on ``device``, or None when it can."""
    if device.type == "cuda" or (device.type == "cpu" and interpreting()):
        return None
    return (f"Triton kernels need a CUDA tensor (got {device.type}); CPU tensors only run under the "
            "Triton interpreter (TRITON_INTERPRET=1 set before imagpose.kernels is imported)")


def check_launch(*tensors: torch.Tensor) -> None:
    """Raise ValueError when a tensor cannot go to a kernel: wrong device or too large for int32 offsets."""
    for tensor in tensors:
        problem = device_problem(tensor.device)
        if problem is not None:
            raise ValueError(problem)
        if tensor.numel() >= MAX_OFFSET:
            raise ValueError(f"tensor of {tensor.numel()} elements: the kernels use int32 offsets (< 2**31)")


def rows_per_program(row_elements: int) -> int:
    """Power-of-two number of rows of ``row_elements`` (padded) values that fills one program's tile."""
    budget = INTERPRETER_TILE if interpreting() else GPU_TILE
    rows = max(1, budget // row_elements)
    return 1 << (rows.bit_length() - 1)


def block(size: int) -> int:
    """Padded (power-of-two) tile extent for a dimension of ``size`` elements."""
    return triton.next_power_of_2(size)


def columns_per_program(size: int) -> int:
    """Tile width for a dimension that is tiled (not reduced): 64 on a GPU, the whole padded size interpreted."""
    return block(size) if interpreting() else min(block(size), 64)
