"""Distil a trained pipeline into a few-step student (latent consistency distillation, LCM): the teacher's UNet
learns to jump along the guided teacher's DDIM trajectory, so the student samples in 1-8 steps with one UNet
batch each (the paper's default: 20 guided steps, 40 UNet batches). --out receives config.yaml, log.csv, loss.png,
validation/, checkpoints/ and pipeline/: the student, a pipeline folder every command loads; its sampling.json
records its few-step defaults, which generate, demo, the SDK and both servers use."""

from __future__ import annotations

from .argument_types import integer, model_folder

NAME = "distill"
HELP = "distil a trained pipeline into a few-step student (LCM)"


def add_arguments(parser) -> None:
    parser.add_argument("--teacher", required=True, metavar="DIR",
                        help="the trained pipeline folder to distil (or a shipped model's name)")
    parser.add_argument("--data", required=True, metavar="DIR", help="dataset folder with train.json (the teacher's)")
    parser.add_argument("--out", required=True, metavar="DIR", help="run folder; created if missing")
    parser.add_argument("--config", default="tiny", metavar="PRESET|YAML",
                        help="training preset or YAML file: its stages.distill and distillation sections")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config key, e.g. --set distillation.student_steps=2 (repeatable)")
    parser.add_argument("--steps", type=integer(1), metavar="N", help="override stages.distill.steps")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in OUT")
    parser.add_argument("--stop-after", type=integer(1), metavar="STEP",
                        help="stop after this step with a checkpoint (continue with --resume)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def command_line(args) -> str:
    """The command that reproduces this run (recorded in the student's training.json)."""
    import shlex

    words = ["imagpose", "train", "distill", "--teacher", args.teacher, "--data", args.data, "--out", args.out,
             "--config", args.config, *(word for override in args.overrides for word in ("--set", override)),
             *(["--steps", str(args.steps)] if args.steps else [])]
    return shlex.join(words)


def run(args) -> int:
    from ..train.config import DISTILL_STAGE, load_config
    from ..train.distillation import run_distillation

    teacher = model_folder(args.teacher)  # a folder, or a shipped model's name (recorded as typed)
    overrides = list(args.overrides) + ([f"stages.{DISTILL_STAGE}.steps={args.steps}"] if args.steps else [])
    config = load_config(args.config, overrides)
    config.stage(DISTILL_STAGE)  # a config without the section fails here, before the teacher loads
    result = run_distillation(config, teacher, args.data, args.out, resume=args.resume,
                              stop_after=args.stop_after, progress=not args.no_progress, command=command_line(args))
    print(f"imagpose train distill: {result.steps} steps, final loss {result.final_loss:.4f}, "
          f"{result.samples_per_second:.1f} samples/s, {result.seconds:.0f} s -> {result.product}")
    return 0
