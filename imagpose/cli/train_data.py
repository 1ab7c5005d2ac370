"""Generate synthetic training people: procedural figures in varied poses and scenes with exact OpenPose-18
keypoints and foreground masks, in the trainer's dataset layout (image/ dwpose/ keypoints/ mask/ background/,
train.json and test.json split by identity, dataset.json). Deterministic by --seed: the first N identities of a
larger dataset are the same people."""

from __future__ import annotations

from ..seeds import TRAINING_PEOPLE_SEED
from .argument_types import integer, number, parse_size, seed

NAME = "make-data"
HELP = "generate a synthetic dataset of people with exact keypoints and masks"


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="dataset folder, created if missing; files are added beside its contents once the whole "
                             "dataset is generated")
    parser.add_argument("--identities", type=integer(1), required=True, metavar="N", help="number of people")
    parser.add_argument("--seed", type=seed, default=TRAINING_PEOPLE_SEED, help="generator seed")
    parser.add_argument("--size", type=parse_size, default=(64, 64), metavar="HxW",
                        help="image size in pixels, height x width (at least 32x32)")
    parser.add_argument("--views", type=integer(2), default=6, metavar="V", help="images (poses) per person")
    parser.add_argument("--test-fraction", type=number(0, 1, high_inclusive=False), default=0.1, metavar="F",
                        help="fraction of the people held out in test.json (never trained on)")


def run(args) -> int:
    from ..synthetic.dataset import make_dataset

    summary = make_dataset(args.out, args.identities, seed=args.seed, size=args.size, views_per_identity=args.views,
                           test_fraction=args.test_fraction)
    height, width = summary.image_size
    print(f"imagpose train make-data: {summary.identities} identities ({len(summary.train)} train, "
          f"{len(summary.test)} test), {summary.images} images of {height}x{width} (HxW), seed {summary.seed}, "
          f"in {summary.seconds:.1f} s -> {summary.root}")
    families = sorted(summary.pose_families.items(), key=lambda item: -item[1])
    print("  poses: " + ", ".join(f"{family} {count}" for family, count in families))
    return 0
