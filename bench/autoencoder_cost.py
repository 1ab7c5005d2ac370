"""What each autoencoder class costs at full size: exact FLOPs of encoding and decoding one image, counted on the
meta device (no weights, no download), and parameter counts.

    from imagpose.bench.autoencoder_cost import autoencoder_costs, format_costs
    print(format_costs(autoencoder_costs((512, 512))))

Rows: SD's VAE (sd-vae-ft-mse, the official pipeline's ``AutoencoderKL``), TAESD (diffusers' ``AutoencoderTiny``
defaults, the design of madebyollin/taesd, which decodes SD-1.5 latents) and the tiny preset's autoencoder. A
TAESD decoder in an SD-1.5-size pipeline replaces the KL decoder at the ratio this table gives.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from imagpose import autoencoders
from imagpose.presets import SD_VAE, get_preset

from .meter import count_flops

# diffusers' AutoencoderTiny defaults are TAESD's architecture (64 channels, 1/3/3/3 encoder blocks)
TAESD = dict(in_channels=3, out_channels=3, latent_channels=4, scaling_factor=1.0)


@dataclass(frozen=True)
class AutoencoderCost:
    name: str
    class_name: str
    parameters: int
    encode_gflops: float
    decode_gflops: float


def designs() -> dict[str, tuple[str, dict]]:
    tiny = get_preset("tiny")
    return {"SD VAE (sd-vae-ft-mse)": ("AutoencoderKL", SD_VAE), "TAESD": ("AutoencoderTiny", TAESD),
            "tiny preset": (tiny.vae_class, tiny.vae)}


def measure(name: str, class_name: str, config: dict, size: tuple[int, int]) -> AutoencoderCost:
    """FLOPs of encoding and decoding one (3, H, W) image with the pipeline's own calls, on the meta device."""
    with torch.device("meta"):
        vae = autoencoders.build_autoencoder(class_name, config).eval()
        pixels = torch.zeros(1, 3, *size)
        factor = autoencoders.downscale_factor(vae)
        latents = torch.zeros(1, config.get("latent_channels", 4), size[0] // factor, size[1] // factor)
        encode = count_flops(autoencoders.encode, vae, pixels)
        decode = count_flops(autoencoders.decode, vae, latents)
    return AutoencoderCost(name, class_name, sum(p.numel() for p in vae.parameters()), encode / 1e9, decode / 1e9)


def autoencoder_costs(size: tuple[int, int] = (512, 512)) -> list[AutoencoderCost]:
    return [measure(name, class_name, config, size) for name, (class_name, config) in designs().items()]


def format_costs(costs: list[AutoencoderCost], size: tuple[int, int] = (512, 512)) -> str:
    """A markdown table; ratios are against the first row (SD's VAE)."""
    base = costs[0]
    lines = [f"Autoencoders at {size[0]}x{size[1]} pixels (one image; FLOPs counted on the meta device, "
             "1 multiply-add = 2 FLOPs)", "",
             "| autoencoder | class | parameters | encode GFLOPs | decode GFLOPs | decode vs SD VAE |",
             "|---|---|---|---|---|---|"]
    for cost in costs:
        ratio = ("1 (reference)" if cost is base else f"{cost.decode_gflops / base.decode_gflops:.3f}x "
                 f"({base.decode_gflops / cost.decode_gflops:.0f}x fewer FLOPs)")
        lines.append(f"| {cost.name} | {cost.class_name} | {cost.parameters / 1e6:.2f} M | "
                     f"{cost.encode_gflops:.1f} | {cost.decode_gflops:.1f} | {ratio} |")
    return "\n".join(lines)


def as_json(costs: list[AutoencoderCost], size: tuple[int, int]) -> dict:
    return {"size": list(size), "rows": [asdict(cost) for cost in costs]}
