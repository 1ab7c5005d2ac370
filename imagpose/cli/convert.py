"""Convert official IMAGPose checkpoints (.pth state dicts, loaded with weights_only=True, or .safetensors)
into imagpose component folders (config.json + safetensors). Every source key is consumed or reported as
deliberately dropped, every shape is checked, and the first mismatching key is named on failure."""

from __future__ import annotations

NAME = "convert"
HELP = "convert official checkpoints (denoising_unet/motion_module, pose_guider, patch) to imagpose format"


def add_arguments(parser) -> None:
    parser.add_argument("--unet", metavar="PTH", help="denoising_unet-N.pth or motion_module-N.pth (full UNet)")
    parser.add_argument("--pose-guider", metavar="PTH", help="pose_guider-N.pth")
    parser.add_argument("--patch", metavar="PTH", help="patch-N.pth (the FLC tokenizer)")
    parser.add_argument("--unet-config", metavar="JSON",
                        help="official UNet3D config (JSON, as saved by the official code) instead of --preset")
    parser.add_argument("--preset", default="sd15", choices=["sd15", "tiny"], help="architecture of the checkpoint")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="dtype of the output")
    parser.add_argument("--vae", metavar="DIR",
                        help="diffusers AutoencoderKL folder (sd-vae-ft-mse) or AutoencoderTiny folder (a TAESD for "
                             "SD-1.5 latents): with --image-encoder and all three checkpoints, OUT becomes a complete "
                             "pipeline folder")
    parser.add_argument("--image-encoder", metavar="DIR", help="transformers DINOv2 folder (dinov2-base)")
    parser.add_argument("--out", required=True,
                        help="output folder: OUT/{unet,pose_guider,flc_tokenizer}, or a pipeline folder with --vae "
                             "and --image-encoder; created if missing, other files in it are kept")


def run(args) -> int:
    from ..convert import convert_official_checkpoints
    from ..io import read_json_file
    from .common import DTYPES

    official_config = None
    if args.unet_config:
        official_config = read_json_file(args.unet_config, "pass the official UNet3D config (a JSON object)")
        official_config = official_config.get("unet3d_config", official_config)
    reports = convert_official_checkpoints(args.out, unet=args.unet, pose_guider=args.pose_guider,
                                           patch=args.patch, preset=args.preset,
                                           official_unet_config=official_config, dtype=DTYPES[args.dtype],
                                           vae=args.vae, image_encoder=args.image_encoder)
    for report in reports:
        print("\n".join(report.lines()))
    what = "a pipeline folder (imagpose generate --model OUT)" if args.vae else ", ".join(r.component for r in reports)
    print(f"wrote {what} to {args.out}")
    return 0
