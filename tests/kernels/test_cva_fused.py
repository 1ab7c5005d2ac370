"""The CVA module and the whole tiny UNet on the "triton" backend (fused kernels) vs the eager path."""

import io
import pickle

import pytest
import torch

from imagpose.errors import InvalidArgumentError
from imagpose.models.cva import CrossViewAttention
from imagpose.presets import build_pipeline, randomize_weights
from imagpose.verify import verify_fixture
from tests.conftest import official_fixture_params

from .parity import assert_within_torch_error, case_id


def _cva(channels, position_encoding=True, seed=0):
    cva = CrossViewAttention(channels, num_heads=8, position_encoding=position_encoding).eval()
    randomize_weights(cva, torch.Generator().manual_seed(seed))
    return cva


def _run(cva, canvas, grid, backend, dtype):
    module = cva.to(dtype)
    module.set_backend(backend)
    return module(canvas.to(dtype), grid)


@pytest.mark.parametrize("dtype, channels, grid, tile, position_encoding", [
    (torch.float32, 64, (2, 2), (3, 5), True),
    (torch.float32, 320, (2, 3), (5, 3), True),
    (torch.float32, 64, (1, 2), (4, 4), False),
    (torch.float16, 64, (2, 2), (3, 5), True),
    (torch.bfloat16, 64, (2, 3), (3, 3), True),
], ids=case_id)
def test_cva_module_matches_the_eager_path(dtype, channels, grid, tile, position_encoding, device):
    """Kernel path in ``dtype`` vs eager fp64, against eager's own error in ``dtype``."""
    cva = _cva(channels, position_encoding).to(device)
    (rows, cols), (h, w) = grid, tile
    canvas = torch.randn(2, channels, rows * h, cols * w, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        reference = _run(cva, canvas, grid, "eager", torch.float64)
        eager = _run(cva, canvas, grid, "eager", dtype)
        fused = _run(cva, canvas, grid, "triton", dtype)
    assert fused.dtype == dtype and fused.shape == canvas.shape
    assert_within_torch_error("cva", fused, eager, reference, dtype)


def test_cva_module_gradients_match_the_eager_path(device):
    canvas = torch.randn(2, 64, 6, 10, generator=torch.Generator().manual_seed(2)).to(device)
    grad_out = torch.randn(canvas.shape, generator=torch.Generator().manual_seed(3)).to(device)
    results = {}
    for backend, dtype in (("eager", torch.float64), ("eager", torch.float32), ("triton", torch.float32)):
        cva = _cva(64).to(device, dtype)
        cva.set_backend(backend)
        x = canvas.to(dtype, copy=True).requires_grad_()
        (cva(x, (2, 2)) * grad_out.to(dtype)).sum().backward()
        results[backend, dtype] = [x.grad] + [p.grad for p in cva.parameters()]
    for i, (fused, eager, reference) in enumerate(zip(results["triton", torch.float32],
                                                      results["eager", torch.float32],
                                                      results["eager", torch.float64])):
        assert_within_torch_error(f"grad {i}", fused, eager, reference, torch.float32, factor=3.0)


def test_tiny_unet_triton_backend_matches_eager(device):
    unet = build_pipeline("tiny", seed=0).unet.to(device).eval()
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 9, 32, 32, generator=generator).to(device)
    context = torch.randn(2, 7, 32, generator=generator).to(device)
    with torch.no_grad():
        unet.set_cva_backend("eager")
        eager = unet(sample, torch.tensor([500.0]), context).sample
        unet.set_cva_backend("triton")
        fused = unet(sample, torch.tensor([500.0]), context).sample
    diff = (fused - eager).abs()
    print(f"tiny UNet triton vs eager: max {diff.max().item():.3e} mean {diff.mean().item():.3e} "
          f"(output max {eager.abs().max().item():.3f})")
    assert (diff <= 1e-4 + 1e-4 * eager.abs()).all()


@pytest.mark.parametrize("folder", official_fixture_params())
def test_every_official_fixture_passes_with_the_triton_backend(folder, device):
    """``imagpose verify-official <fixtures> --attention-backend triton`` (fixtures run on CPU tensors)."""
    if device != "cpu":
        pytest.skip("the fixtures run on CPU tensors: the triton backend needs the interpreter there")
    report = verify_fixture(folder, attention_backend="triton")
    print(report.format())
    assert report.passed, report.format()


class TritonCVA(torch.nn.Module):
    """A 32-channel CVA module on the fused Triton path, called on a 2x2 grid."""

    def __init__(self):
        super().__init__()
        self.cva = _cva(32)
        self.cva.set_backend("triton")

    def forward(self, canvas):
        return self.cva(canvas, (2, 2))


def test_onnx_export_of_the_triton_backend_is_refused():
    pytest.importorskip("onnx")

    with pytest.raises(InvalidArgumentError, match=r"'triton' has no ONNX form; export with a traceable backend"):
        torch.onnx.export(TritonCVA(), (torch.randn(1, 32, 4, 4),), io.BytesIO(), dynamo=False)


def test_a_module_on_the_triton_backend_pickles(device):
    """The module keeps the backend's name, not its functions: it pickles and runs the same after loading."""
    model = TritonCVA().to(device)
    again = pickle.loads(pickle.dumps(model))
    canvas = torch.randn(1, 32, 4, 4, generator=torch.Generator().manual_seed(6)).to(device)
    with torch.no_grad():
        assert torch.equal(again(canvas), model(canvas))


def test_torch_export_traces_the_fused_path(device):
    model = TritonCVA().to(device)
    canvas = torch.randn(1, 32, 6, 10, generator=torch.Generator().manual_seed(4)).to(device)
    program = torch.export.export(model, (canvas,))
    ops = {str(node.target) for node in program.graph.nodes if str(node.target).startswith("imagpose.")}
    assert ops == {"imagpose.group_norm_to_tokens.default", "imagpose.layer_norm_view_pe.default",
                   "imagpose.cross_view_attention_fwd.default", "imagpose.tokens_to_canvas.default"}
    with torch.no_grad():
        torch.testing.assert_close(program.module()(canvas), model(canvas))


def test_torch_compile_traces_forward_and_backward_without_graph_breaks(device):
    cva = _cva(32).to(device)
    cva.set_backend("triton")
    canvas = torch.randn(1, 32, 6, 10, generator=torch.Generator().manual_seed(5)).to(device).requires_grad_()
    compiled = torch.compile(lambda x: cva(x, (2, 2)), backend="aot_eager", fullgraph=True)
    compiled(canvas).square().sum().backward()
    fused_grad, canvas.grad = canvas.grad, None
    cva.set_backend("eager")
    cva(canvas, (2, 2)).square().sum().backward()
    torch.testing.assert_close(fused_grad, canvas.grad, rtol=1e-4, atol=1e-4)
