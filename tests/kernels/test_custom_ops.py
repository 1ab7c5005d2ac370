"""The ``imagpose::`` custom ops pass torch.library.opcheck: schema, fake (meta) kernels, torch.compile dispatch."""

import pytest
import torch

from imagpose.kernels.attention import cross_view_attention_bwd, cross_view_attention_fwd
from imagpose.kernels.group_norm import group_norm_to_tokens_op
from imagpose.kernels.join import tokens_to_canvas_op
from imagpose.kernels.layer_norm import layer_norm_view_pe_op


def _op_cases(device):
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    qkv = [randn(6, 4, 16).reshape(6, 4, 2, 8).transpose(1, 2) for _ in range(4)]  # last one is grad_out
    out = cross_view_attention_fwd(*qkv[:3], 0.35).transpose(1, 2)
    canvas, tokens = randn(2, 16, 6, 10), randn(30, 4, 16)
    weight, bias, pe = randn(16), randn(16), randn(1, 32, 16)
    return {
        "cross_view_attention_fwd": (cross_view_attention_fwd, (*qkv[:3], 0.35)),
        "cross_view_attention_bwd": (cross_view_attention_bwd, (qkv[3], *qkv[:3], out, 0.35)),
        "group_norm_to_tokens": (group_norm_to_tokens_op, (canvas, 2, 2, 8, weight, bias, 1e-6)),
        "layer_norm_view_pe": (layer_norm_view_pe_op, (tokens, weight, bias, 1e-5, pe)),
        "tokens_to_canvas": (tokens_to_canvas_op, (tokens, canvas, 2, 2)),
    }


@pytest.mark.parametrize("name", ["cross_view_attention_fwd", "cross_view_attention_bwd", "group_norm_to_tokens",
                                  "layer_norm_view_pe", "tokens_to_canvas"])
def test_custom_op_passes_opcheck(name, device):
    op, args = _op_cases(device)[name]
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
