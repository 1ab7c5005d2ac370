"""Train IMAGPose: make synthetic data, train the tiny VAE, run the three stages, evaluate on held-out people.

  imagpose train make-data --out data/ --identities 200 --seed 0
  imagpose train vae --data data/ --out runs/vae
  imagpose train run --config tiny --data data/ --out runs/tiny            # stage1 -> stage2 -> end2end
  imagpose train distill --teacher runs/tiny/pipeline --data data/ --out runs/student     # few-step student
  imagpose train eval --model runs/tiny/pipeline --data heldout/ --out eval/
  imagpose train all --out runs/tiny_all                                     # every step above, one command

Each subcommand lives in its own module (``train_<name>.py``); the trainer itself is ``imagpose.train``.
"""

from __future__ import annotations

import argparse

from . import train_all, train_data, train_distill, train_eval, train_run, train_vae

NAME = "train"
HELP = "train IMAGPose (synthetic data, tiny VAE, three stages, distillation, evaluation)"
COMMANDS = (train_data, train_vae, train_run, train_distill, train_eval, train_all)


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="train_command", required=True, metavar="WHAT",
                                help=" | ".join(module.NAME for module in COMMANDS))
    for module in COMMANDS:
        child = sub.add_parser(module.NAME, help=module.HELP, description=module.__doc__,
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(child)
        child.set_defaults(train_handler=module.run)


def run(args) -> int:
    return args.train_handler(args)
