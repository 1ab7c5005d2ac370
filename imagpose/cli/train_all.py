"""Everything in one command: generate the people, train the tiny VAE, run stage1 -> stage2 -> end2end, then
evaluate the final pipeline on people generated from another seed (never seen in training). OUT receives
data/, vae/, stage1/, stage2/, end2end/ (end2end/pipeline is the trained model), heldout/, eval/, loss.png (all
stages) and timing.json (seconds per phase). With --resume, finished phases are kept and a stage in progress
continues from its latest checkpoint. The recipe itself is imagpose.train.recipe.train_all."""

from __future__ import annotations

from ..seeds import HELD_OUT_PEOPLE_SEED, TRAINING_PEOPLE_SEED
from .argument_types import integer, seed

NAME = "all"
HELP = "make data, train the VAE and all three stages, evaluate on held-out people: one command"


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="run folder, created if missing")
    parser.add_argument("--config", default="tiny", metavar="PRESET|YAML", help="training preset or YAML file")
    parser.add_argument("--identities", type=integer(2), default=400, metavar="N", help="people to generate")
    parser.add_argument("--seed", type=seed, default=TRAINING_PEOPLE_SEED, help="seed of the generated training people")
    parser.add_argument("--eval-identities", type=integer(1), default=48, metavar="N",
                        help="held-out people generated for the evaluation")
    parser.add_argument("--eval-seed", type=seed, default=HELD_OUT_PEOPLE_SEED,
                        help="seed of the held-out people (must differ from --seed)")
    parser.add_argument("--vae-steps", type=integer(1), metavar="N",
                        help="autoencoder training steps (default: the config's autoencoder.steps)")
    parser.add_argument("--eval-steps", type=integer(1), default=20, help="DDIM steps of the evaluation")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a training config key (repeatable)")
    parser.add_argument("--resume", action="store_true", help="keep finished phases; resume the running stage")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def run(args) -> int:
    from ..train.recipe import RecipeOptions, train_all

    options = RecipeOptions(identities=args.identities, seed=args.seed, eval_identities=args.eval_identities,
                            eval_seed=args.eval_seed, vae_steps=args.vae_steps, eval_steps=args.eval_steps,
                            overrides=tuple(args.overrides), config=args.config)
    result = train_all(args.out, options, resume=args.resume, progress=not args.no_progress)
    if result.evaluation is not None:
        print(result.evaluation.table())
    total = sum(v for k, v in result.timing.items() if k != "total")
    print(f"imagpose train all: {total:.0f} s in all; the trained pipeline is {result.pipeline}")
    return 0
