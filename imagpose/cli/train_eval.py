"""Evaluate a pipeline folder on the held-out people of a dataset (test.json): for each item (a source view and
another view of the same person as the ground-truth target, T2 layout) the model, the same architecture untrained
and copying the source tile are scored against the ground truth with SSIM and PSNR, pose IoU (the foreground mask
of the image against the exact person mask) and colour error inside the person (CIE76, lower is better). Prints
mean +- std and how often the model beats copying the source. --out receives summary.json, scores.csv, figure.png
and strips/ (per item: source | ground truth | generated)."""

from __future__ import annotations

from pathlib import Path

from ..measures import DEFAULT_KERNEL, DEFAULT_THRESHOLD
from ..sampling_config import SamplingConfig
from .argument_types import integer, model_folder, number, sampling_setting, seed

NAME = "eval"
HELP = "score a trained pipeline on held-out people against untrained and copy-source baselines"


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", type=model_folder,
                        help="pipeline folder (the pipeline/ folder of `imagpose train run`, or "
                             "IMAGPosePipeline.save_pretrained())")
    parser.add_argument("--data", required=True, metavar="DIR", help="dataset folder with test.json")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder for summary.json, scores.csv, figure.png and strips/ (created if missing; "
                             "files are added beside its contents once the evaluation succeeds); without it nothing "
                             "is written")
    parser.add_argument("--steps", type=sampling_setting("num_inference_steps", int), default=None,
                        help=f"sampling steps (default: the model's; the paper's DDIM "
                             f"{SamplingConfig.num_inference_steps})")
    parser.add_argument("--guidance", type=sampling_setting("guidance_scale", float), default=None,
                        help=f"classifier-free guidance scale w (<= 1 turns guidance off; default: the model's, the "
                             f"paper's {SamplingConfig.guidance_scale})")
    parser.add_argument("--student", default=None, metavar="DIR", type=model_folder,
                        help="a few-step student distilled from --model (`imagpose train distill`): also scored at 4, "
                             "2 and 1 steps, timed beside the model, and drawn beside it in figure.png")
    parser.add_argument("--seed", type=seed, default=0,
                        help="seed of the pair choice; item i is generated with noise seed seed + i")
    parser.add_argument("--max-items", type=integer(1), default=None, metavar="N",
                        help="score only the first N items (default: all)")
    parser.add_argument("--pairs-per-identity", type=integer(1), default=1,
                        help="(source, target) view pairs drawn per held-out person")
    parser.add_argument("--zero-dino", action="store_true",
                        help="also score the model with its DINO tokens zeroed (FLC tokens alone)")
    parser.add_argument("--threshold", type=number(0, 1, low_inclusive=False, high_inclusive=False),
                        default=DEFAULT_THRESHOLD,
                        help="pose IoU: a pixel is foreground where it differs from the background by more than this "
                             "in some RGB channel (in [0, 1])")
    parser.add_argument("--kernel", type=integer(1), default=DEFAULT_KERNEL,
                        help="pose IoU: odd size in pixels of the opening/closing that cleans the foreground mask")
    parser.add_argument("--batch-size", type=integer(1), default=8, help="requests per pipeline call")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args) -> int:
    from ..train.evaluation import evaluate
    from .common import check_device

    device = check_device(args.device)
    evaluation = evaluate(args.model, args.data, args.out, steps=args.steps, guidance_scale=args.guidance,
                          seed=args.seed, pairs_per_identity=args.pairs_per_identity, max_items=args.max_items,
                          zero_dino=args.zero_dino, student=args.student, threshold=args.threshold,
                          kernel=args.kernel, device=device, batch_size=args.batch_size, progress=not args.no_progress)
    settings = evaluation.summary["settings"]
    print(f"imagpose train eval: {args.model} on {Path(args.data) / 'test.json'}, {settings['steps']} steps, "
          f"guidance {settings['guidance_scale']}")
    print(evaluation.table())
    for name, row in (evaluation.summary.get("students") or {}).items():
        print(f"{name}: {row['speedup']:.2f}x faster per image than the model; SSIM drop {row['drop']['ssim']:+.4f}, "
              f"pose IoU drop {row['drop']['pose_iou']:+.4f} (positive = worse)")
    if args.out is not None:
        print(f"summary.json, scores.csv, figure.png and strips/ -> {args.out}")
    return 0
