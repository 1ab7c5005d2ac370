"""Train the preset's autoencoder (AutoencoderKL or the TAESD-style AutoencoderTiny) from scratch on a dataset's
train split, on the same training loop as the stages (checkpoints, --resume, trackers), calibrate its latent scale,
and report how it reproduces held-out people: PSNR of tiles, canvases, masked canvases and upscaled references,
the people's round trip (pose IoU, colour error) and flat / two-colour probes. --out receives the autoencoder folder
(config.json + diffusion_pytorch_model.safetensors), recon.png, recon_canvas.png, vae_report.json, vae_curve.json,
log.csv, loss.png and checkpoints/."""

from __future__ import annotations

import json
from pathlib import Path

from .argument_types import block_counts, integer, number, seed

NAME = "vae"
HELP = "train the tiny autoencoder on generated people and report its held-out round trip"


def add_arguments(parser) -> None:
    from ..train.config import AutoencoderConfig

    default = AutoencoderConfig()
    parser.add_argument("--data", required=True, metavar="DIR", help="dataset folder (`imagpose train make-data`)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder for the autoencoder, created if missing; files are added beside its "
                             "contents")
    parser.add_argument("--steps", type=integer(1), default=default.steps, help="optimizer steps")
    parser.add_argument("--batch-size", type=integer(4, multiple_of=4), default=default.batch_size,
                        help="images per step (a canvas step uses batch-size / 4 2x2 canvases)")
    parser.add_argument("--lr", type=number(0, low_inclusive=False), default=None,
                        help=f"AdamW peak learning rate (1%% warm-up, cosine decay; default {default.learning_rate:g}, "
                             f"with --decoder-of {default.decoder_learning_rate:g})")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the initial weights and the batches")
    parser.add_argument("--loss", default=default.loss, choices=["l1", "mse"], help="reconstruction loss")
    parser.add_argument("--kl-weight", type=number(0), default=default.kl_weight,
                        help="weight of the KL term (SD: 1e-6; AutoencoderKL only)")
    parser.add_argument("--canvas-fraction", type=number(0, 1), default=default.canvas_fraction,
                        help="fraction of the steps that train on 2x2 canvases instead of single tiles")
    parser.add_argument("--colour-permutation", type=number(0, 1), default=default.colour_permutation,
                        help="fraction of the images whose RGB channels are reordered (teaches every colour)")
    parser.add_argument("--eval-every", type=integer(1), default=default.eval_every,
                        help="steps between held-out PSNR measurements")
    parser.add_argument("--checkpoint-every", type=integer(1), default=default.checkpoint_every,
                        help="steps between checkpoints")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "mid", "sd15"], help="autoencoder architecture")
    parser.add_argument("--channels", type=integer(1), default=None,
                        help="AutoencoderTiny: channels of every level (default: the preset's)")
    parser.add_argument("--encoder-channels", type=integer(1), default=None,
                        help="AutoencoderTiny: channels of the encoder's levels, when narrower than --channels (the "
                             "stages encode every training canvas: the encoder's width sets their cost)")
    parser.add_argument("--encoder-blocks", type=block_counts, default=None, metavar="N,N,N,N",
                        help="AutoencoderTiny: residual blocks per encoder level (default 1,3,3,3; 0,1,3,3 drops "
                             "the costly full- and half-resolution ones)")
    parser.add_argument("--decoder-of", metavar="DIR", default=None,
                        help="train only the decoder of this trained autoencoder folder for --steps steps (its "
                             "encoder and latent scale kept, so a model trained on its latents stays valid)")
    parser.add_argument("--colour-fields", type=number(0, 1), default=default.colour_fields,
                        help="with --decoder-of: fraction of the images replaced by flat colour fields")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in --out (a fresh start when there is none)")
    parser.add_argument("--stop-after", type=integer(1), metavar="STEP",
                        help="stop after this step with a checkpoint (resume later with --resume)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args) -> int:
    from ..train.config import AutoencoderConfig
    from ..train.vae import train_decoder, train_vae

    default = AutoencoderConfig()
    learning_rate = args.lr or default.learning_rate
    decoder_learning_rate = args.lr or default.decoder_learning_rate
    config = AutoencoderConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=learning_rate,
                               loss=args.loss, kl_weight=args.kl_weight, canvas_fraction=args.canvas_fraction,
                               colour_permutation=args.colour_permutation, eval_every=args.eval_every,
                               checkpoint_every=args.checkpoint_every, channels=args.channels,
                               encoder_channels=args.encoder_channels, encoder_blocks=args.encoder_blocks,
                               decoder_steps=args.steps if args.decoder_of else 0, colour_fields=args.colour_fields,
                               decoder_learning_rate=decoder_learning_rate)
    common = dict(seed=args.seed, preset=args.preset, resume=args.resume, stop_after=args.stop_after,
                  progress=not args.no_progress)
    if args.decoder_of:
        result = train_decoder(args.data, args.decoder_of, args.out, config, **common)
    else:
        result = train_vae(args.data, args.out, config, **common)
    if result.steps < args.steps:
        print(f"imagpose train vae: stopped after step {result.steps} with a checkpoint in {args.out}; continue with "
              "--resume")
        return 0
    report = json.loads((Path(args.out) / "vae_report.json").read_text(encoding="utf-8"))
    counts, latent, people = report["held_out_counts"], report["latent_std"], report["held_out_people"]
    colour = report["colour_round_trip"]
    print(f"imagpose train vae: {report['class']} ({report['parameters']:,} parameters), {args.steps} steps on "
          f"{report['settings']['train_images']} images in {report['seconds']:.1f} s -> {args.out}")
    print("  held-out PSNR: " + ", ".join(f"{name} {value:.2f} dB ({counts[name]})"
                                          for name, value in report["psnr"].items()))
    print(f"  held-out people ({people['items']}): PSNR {people['psnr']:.2f} dB, pose IoU {people['pose_iou']:.3f}, "
          f"colour error {people['color_error']:.1f} (CIE76 inside the person)")
    print(f"  colour probes: worst channel error {colour['flat']:.3f} (flat), {colour['two_colour']:.3f} (two colours)")
    if report["decoder_only"]:
        print(f"  latent std: {latent['held_out']:.3f} held out (encoder and latent scale kept)")
    elif latent["channels_before_calibration"]:
        before = latent["channels_before_calibration"]
        print(f"  latents normalised per channel (means {', '.join(f'{v:.2f}' for v in before['mean'])}; stds "
              f"{', '.join(f'{v:.2f}' for v in before['std'])}): std {latent['train']:.3f} on the training images, "
              f"{latent['held_out']:.3f} held out")
    else:
        print(f"  latent std: {latent['train']:.3f} on the training images (calibrated x "
              f"{latent['calibration_factor']:.4g}), {latent['held_out']:.3f} held out")
    return 0
