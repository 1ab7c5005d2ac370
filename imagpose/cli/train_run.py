"""Train IMAGPose: one stage, or stage1 -> stage2 -> end2end in a row, on HF accelerate (the same command runs
under `accelerate launch` on several GPUs or nodes; configs in train/accelerate/). The config is a preset name
(tiny, sd15) or a YAML file; --set overrides any key. --out receives, per stage, config.yaml, data_check.txt,
log.csv, loss.png, validation/, checkpoints/ and pipeline/ (a folder `imagpose generate --model` loads)."""

from __future__ import annotations

from .argument_types import integer

NAME = "run"
HELP = "run a training stage (or all three) from a config preset or YAML file"
STAGE_CHOICES = ("stage1", "stage2", "end2end", "all")


def add_arguments(parser) -> None:
    parser.add_argument("--config", default="tiny", metavar="PRESET|YAML",
                        help="training preset (train/presets/<name>.yaml: tiny, sd15) or a YAML file")
    parser.add_argument("--data", required=True, metavar="DIR", help="dataset folder with train.json")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="run folder (one subfolder per stage with --stage all); created if missing")
    parser.add_argument("--stage", default="all", choices=STAGE_CHOICES, help="which stage to run")
    parser.add_argument("--init-from", metavar="DIR",
                        help="stage2/end2end: the previous stage's pipeline folder (OUT/<stage>/pipeline)")
    parser.add_argument("--vae", metavar="DIR", help="a diffusers AutoencoderKL or AutoencoderTiny folder "
                                                     "(`imagpose train vae`); "
                                                     "same as --set weights.vae=DIR")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config key, e.g. --set stages.stage1.steps=100 (repeatable)")
    parser.add_argument("--steps", type=integer(1), metavar="N",
                        help="override the step count of every stage run (a quick try)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in OUT (finished stages are kept)")
    parser.add_argument("--stop-after", type=integer(1), metavar="STEP",
                        help="stop after this step with a checkpoint (train in chunks; continue with --resume)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def load_run_config(args):
    from ..train.config import STAGES, load_config

    overrides = list(args.overrides)
    if args.vae:
        overrides.append(f"weights.vae={args.vae}")
    config = load_config(args.config, overrides)
    if args.steps:
        config = load_config(args.config, overrides + [f"stages.{s}.steps={args.steps}" for s in STAGES
                                                       if s in config.stages])
    return config


def run(args) -> int:
    from ..errors import InvalidArgumentError
    from ..train.stage_training import run_all, run_stage

    config = load_run_config(args)
    progress = not args.no_progress
    if args.stage == "all":
        if args.stop_after:
            raise InvalidArgumentError("--stop-after applies to one stage; pass --stage too.")
        results = run_all(config, args.data, args.out, resume=args.resume, progress=progress)
    else:
        results = [run_stage(config, args.stage, args.data, args.out, init_from=args.init_from, resume=args.resume,
                             stop_after=args.stop_after, progress=progress)]
    for result in results:
        print(f"imagpose train run: {result.name}: {result.steps} steps, final loss {result.final_loss:.4f}, "
              f"{result.samples_per_second:.1f} samples/s, {result.seconds:.0f} s -> {result.product}")
    return 0
