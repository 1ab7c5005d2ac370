"""Train the preset's AutoencoderKL from scratch on a dataset's train split (SD's autoencoder loss without the
perceptual and adversarial terms), calibrate its latent scale for the official 0.18215, and report the PSNR of
held-out people's tiles, canvases, masked canvases and upscaled references. --out receives a diffusers
AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors), recon.png, recon_canvas.png and
vae_report.json."""

from __future__ import annotations

import json
from pathlib import Path

from .train_common import integer, number

NAME = "vae"
HELP = "train the tiny VAE on generated people and report its held-out PSNR"


def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR", help="dataset folder (`imagpose train make-data`)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder for the VAE, created if missing; files are added beside its contents "
                             "once training succeeds")
    parser.add_argument("--steps", type=integer(1), default=2000, help="optimizer steps")
    parser.add_argument("--batch-size", type=integer(4, multiple_of=4), default=16,
                        help="images per step (a canvas step uses batch-size / 4 2x2 canvases)")
    parser.add_argument("--lr", type=number(0, low_inclusive=False), default=2e-3,
                        help="AdamW peak learning rate (1%% warm-up, cosine decay)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the batches")
    parser.add_argument("--loss", default="l1", choices=["l1", "mse"], help="reconstruction loss")
    parser.add_argument("--kl-weight", type=number(0), default=1e-6, help="weight of the KL term (SD: 1e-6)")
    parser.add_argument("--canvas-fraction", type=number(0, 1), default=0.25,
                        help="fraction of the steps that train on 2x2 canvases instead of single tiles")
    parser.add_argument("--eval-every", type=integer(1), default=250, help="steps between held-out PSNR measurements")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "mid", "sd15"], help="VAE architecture")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args) -> int:
    from ..train.vae import train_vae
    from .common import check_device

    device = check_device(args.device)
    out = train_vae(args.data, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                    loss=args.loss, kl_weight=args.kl_weight, canvas_fraction=args.canvas_fraction,
                    eval_every=args.eval_every, preset=args.preset, device=device, progress=not args.no_progress)
    report = json.loads((Path(out) / "vae_report.json").read_text(encoding="utf-8"))
    counts, latent = report["held_out_counts"], report["latent_std"]
    print(f"imagpose train vae: {args.steps} steps on {report['settings']['train_images']} images in "
          f"{report['seconds']:.1f} s -> {out}")
    print("  held-out PSNR: " + ", ".join(f"{name} {value:.2f} dB ({counts[name]})"
                                          for name, value in report["psnr"].items()))
    print(f"  latent std x {latent['scaling_factor']}: {latent['train_mean']:.3f} on the training images (calibrated "
          f"x {latent['calibration_factor']:.4g}), {latent['held_out_mean']:.3f} held out")
    return 0
