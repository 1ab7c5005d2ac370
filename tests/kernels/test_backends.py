"""The "triton" and "xformers" CVA backends in the registry: registration, constraints, refusals, chunking."""

import importlib
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import imagpose.kernels
from imagpose.errors import InvalidArgumentError, MissingDependencyError
from imagpose.kernels import backends
from imagpose.kernels.backends import TRITON_BACKEND, XFORMERS_BACKEND, XFORMERS_MAX_BATCH, xformers_attention
from imagpose.models.attention import CVACall, cva_backends, get_cva_backend
from imagpose.models.cva import CrossViewAttention
from imagpose.models.cva_ops import eager_attention

KERNELS_FOLDER = Path(imagpose.kernels.__file__).resolve().parent


def _qkv(positions, views, heads, head_dim, dtype=torch.float32, device="cpu"):
    return [torch.randn(positions, views, heads * head_dim, dtype=dtype, device=device)
            .reshape(positions, views, heads, head_dim).transpose(1, 2) for _ in range(3)]


def test_triton_backend_supplies_the_four_kernels_and_is_not_onnx_traceable(device):
    backend = get_cva_backend("triton")
    assert backend is TRITON_BACKEND and "triton" in cva_backends() and not backend.traceable
    assert (backend.group_norm_to_tokens, backend.layer_norm_view_pe, backend.attention, backend.tokens_to_canvas) \
        == (backends.triton_group_norm_to_tokens, backends.triton_layer_norm_view_pe,
            imagpose.kernels.cross_view_attention, imagpose.kernels.tokens_to_canvas)
    q, k, v = _qkv(5, 4, 2, 8, device=device)
    torch.testing.assert_close(backend.attention(q, k, v, 8**-0.5), eager_attention(q, k, v, 8**-0.5))


@pytest.mark.parametrize("channels, heads, grid, dtype, match", [
    (32, 8, (2, 2), torch.float64, "dtype torch.float64"),
    (32, 8, (3, 11), torch.float32, "V=33"),
    (320, 1, (2, 2), torch.float32, "head_dim=320"),
], ids=["float64", "33 views", "head_dim 320"])
def test_triton_backend_names_the_failed_constraint_before_running(channels, heads, grid, dtype, match, device):
    cva = CrossViewAttention(channels, num_heads=heads, max_views=64).to(device, dtype)
    cva.set_backend("triton")
    canvas = torch.randn(1, channels, 2 * grid[0], 2 * grid[1], dtype=dtype, device=device)
    with pytest.raises(InvalidArgumentError, match=f"backend 'triton' cannot run this call: .*{match}"):
        cva(canvas, grid)


def test_triton_backend_refuses_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(InvalidArgumentError, match="need a CUDA tensor"):
        TRITON_BACKEND.check(CVACall(torch.device("cpu"), torch.float32, 4, 64, 8))


def test_triton_backend_refuses_onnx_export(monkeypatch, device):
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    with pytest.raises(InvalidArgumentError, match=r"export with a traceable backend \(eager, sdpa\)"):
        TRITON_BACKEND.check(CVACall(torch.device(device), torch.float32, 4, 64, 8))


def test_importing_the_package_again_registers_nothing_new():
    registered = {name: get_cva_backend(name) for name in cva_backends()}
    importlib.reload(imagpose.kernels)
    backends.register_backends()
    assert {name: get_cva_backend(name) for name in cva_backends()} == registered
    assert get_cva_backend("triton") is TRITON_BACKEND


def test_transformers_and_diffusers_do_not_import_our_kernels():
    """Both probe for Hugging Face's unrelated ``kernels`` package; the probe must not find this folder."""
    import diffusers.models.attention_dispatch  # noqa: F401
    import transformers.integrations.hub_kernels  # noqa: F401
    from transformers.utils import import_utils

    import_utils.is_kernels_available.cache_clear()  # probe again, now that our kernels are loaded
    import_utils.is_kernels_available()
    foreign = sorted(name for name, module in list(sys.modules.items())
                     if getattr(module, "__file__", None) and Path(module.__file__).resolve().is_relative_to(
                         KERNELS_FOLDER) and not name.startswith("imagpose.kernels"))
    assert foreign == [], f"our kernels folder was imported under other names: {foreign}"


def test_triton_backend_from_a_python_started_in_the_repository_root():
    """``python -c`` / ``python -m`` put the working directory on sys.path, so from the repository root
    transformers' probe imports the top-level ``kernels/`` folder under that name; the package must then stay
    inert (no triton import, no registration), so the backend still loads once, as imagpose.kernels."""
    code = ("from transformers.utils import import_utils\n"
            "assert not import_utils.is_kernels_available()\n"
            "import sys; assert 'kernels' in sys.modules, 'the probe did not import the folder'\n"
            "from imagpose.models.attention import get_cva_backend\n"
            "print(get_cva_backend('triton').name)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=KERNELS_FOLDER.parent, capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "triton", proc.stderr[-2000:]


def test_xformers_is_registered_exactly_when_importable():
    assert ("xformers" in cva_backends()) == (importlib.util.find_spec("xformers") is not None)
    with pytest.raises(InvalidArgumentError, match="needs a CUDA tensor"):
        XFORMERS_BACKEND.check(CVACall(torch.device("cpu"), torch.float16, 4, 64, 8))


@pytest.mark.skipif(importlib.util.find_spec("xformers") is not None, reason="xformers is installed here")
def test_xformers_without_xformers_is_a_missing_dependency():
    with pytest.raises(MissingDependencyError, match="'xformers' is not available: imagpose.kernels.backends "
                                                     "registers it only when .* install it or choose one of eager, "
                                                     "sdpa, triton"):
        get_cva_backend("xformers")


def test_xformers_backend_chunks_the_batch_below_65536(monkeypatch):
    """xformers #845: batch >= 65536 fails on CUDA. A stand-in xformers records the chunks it is given."""
    chunks = []

    def memory_efficient_attention(q, k, v, scale):  # (batch, seq, heads, d), like xformers
        chunks.append(q.shape[0])
        return eager_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale).transpose(1, 2)

    ops = types.SimpleNamespace(memory_efficient_attention=memory_efficient_attention)
    monkeypatch.setitem(sys.modules, "xformers", types.SimpleNamespace(ops=ops))
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    q, k, v = _qkv(2 * XFORMERS_MAX_BATCH + 7, 2, 1, 2)
    out = xformers_attention(q, k, v, 0.5)
    assert chunks == [XFORMERS_MAX_BATCH, XFORMERS_MAX_BATCH, 7]
    torch.testing.assert_close(out, eager_attention(q, k, v, 0.5))
