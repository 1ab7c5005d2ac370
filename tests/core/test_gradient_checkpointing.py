"""Gradient checkpointing of IMAGPoseUNet (diffusers' enable_gradient_checkpointing): the same gradients, and every
resnet, spatial transformer block and CVA module really recomputes its activations in the backward pass."""

import copy
from collections import Counter

import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import ResnetBlock2D
from torch.utils.checkpoint import checkpoint

from imagpose.models.cva import CrossViewAttention
from imagpose.presets import build_components

CHECKPOINTED = (ResnetBlock2D, BasicTransformerBlock, CrossViewAttention)


@pytest.fixture(scope="module")
def unet():
    return build_components("tiny", seed=0)["unet"].train()


def unet_inputs(unet):
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 9, 16, 16, generator=generator)  # a 2x2 canvas of 64x64 tiles
    context = torch.randn(2, 6, unet.config.cross_attention_dim, generator=generator)
    pose_features = torch.randn(2, unet.config.block_out_channels[0], 16, 16, generator=generator)
    return sample, torch.tensor([10, 900]), context, pose_features


def loss_of(unet, inputs):
    sample, timesteps, context, pose_features = inputs
    out = unet(sample, timesteps, context, pose_features, grid=(2, 2), return_dict=False)[0]
    return out.square().mean()


def gradients(unet) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in unet.named_parameters()}


def test_checkpointed_gradients_equal_the_plain_ones_and_every_block_is_checkpointed(unet, one_thread):
    inputs = unet_inputs(unet)
    plain = copy.deepcopy(unet)
    loss_of(plain, inputs).backward()
    calls = Counter()

    def counting_checkpoint(module, *args):
        calls[type(module).__name__] += 1
        return checkpoint(module, *args, use_reentrant=False)

    checkpointed = copy.deepcopy(unet)
    checkpointed.enable_gradient_checkpointing(counting_checkpoint)
    loss = loss_of(checkpointed, inputs)
    loss.backward()
    expected = Counter(type(m).__name__ for m in unet.modules() if isinstance(m, CHECKPOINTED))
    assert calls == expected and expected["CrossViewAttention"] == 10 and expected["ResnetBlock2D"] > 0
    torch.testing.assert_close(loss, loss_of(plain, inputs).detach())
    plain_grads, checkpointed_grads = gradients(plain), gradients(checkpointed)
    assert plain_grads.keys() == checkpointed_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def saved_bytes(unet, inputs) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one forward."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss_of(unet, inputs)
    return total


def test_checkpointing_keeps_fewer_activations_and_is_off_without_gradients(unet, one_thread):
    inputs = unet_inputs(unet)
    plain = copy.deepcopy(unet)
    checkpointed = copy.deepcopy(unet)
    checkpointed.enable_gradient_checkpointing()
    assert saved_bytes(checkpointed, inputs) < 0.5 * saved_bytes(plain, inputs)
    calls = []
    checkpointed.enable_gradient_checkpointing(lambda module, *args: calls.append(module) or module(*args))
    with torch.no_grad():  # inference never checkpoints
        loss_of(checkpointed, inputs)
    assert calls == []
    checkpointed.disable_gradient_checkpointing()
    loss_of(checkpointed, inputs)
    assert calls == []
