"""imagpose bench autoencoders: FLOPs of every autoencoder class on the meta device, TAESD far cheaper than SD's
VAE at decoding."""

import json

import pytest
import torch

from imagpose import autoencoders
from imagpose.bench.autoencoder_cost import autoencoder_costs, measure
from imagpose.cli import main


def test_taesd_decodes_at_a_small_fraction_of_the_kl_decoder():
    costs = {cost.name: cost for cost in autoencoder_costs((64, 64))}
    kl, taesd = costs["SD VAE (sd-vae-ft-mse)"], costs["TAESD"]
    assert kl.class_name == "AutoencoderKL" and taesd.class_name == "AutoencoderTiny"
    assert kl.parameters == 83_653_863  # sd-vae-ft-mse
    assert taesd.decode_gflops < kl.decode_gflops / 10


def test_flops_are_the_convolutions_of_a_one_layer_design():
    """A TAESD-style model whose every stage is one 3x3 convolution: its FLOPs by hand."""
    config = dict(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                  num_encoder_blocks=(0,) * 4, num_decoder_blocks=(0,) * 4, latent_channels=4)
    cost = measure("one-layer", "AutoencoderTiny", config, (32, 32))
    conv = lambda cin, cout, pixels: 2 * 9 * cin * cout * pixels  # noqa: E731
    encoder = conv(3, 8, 32 * 32) + conv(8, 8, 16 * 16) + conv(8, 8, 8 * 8) + conv(8, 8, 4 * 4) + conv(8, 4, 4 * 4)
    assert cost.encode_gflops * 1e9 == pytest.approx(encoder)
    with torch.device("meta"):
        assert autoencoders.downscale_factor(autoencoders.build_autoencoder("AutoencoderTiny", config)) == 8


def test_cli_prints_the_table_and_writes_it(tmp_path, capsys):
    assert main(["bench", "autoencoders", "--size", "64x64", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| TAESD | AutoencoderTiny |" in out and "decode vs SD VAE" in out
    data = json.loads((tmp_path / "autoencoders.json").read_text())
    assert data["size"] == [64, 64] and len(data["rows"]) == 3
