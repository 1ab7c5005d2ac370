"""Kernel tests. Without CUDA they run on CPU in Triton's interpreter (``TRITON_INTERPRET=1``, set by the
top-level tests/conftest.py before anything imports triton)."""

import os

import pytest
import torch

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    raise pytest.UsageError("No GPU: run the kernel tests with TRITON_INTERPRET=1 (tests/conftest.py sets it).")


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
