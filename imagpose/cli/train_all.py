"""Everything in one command: generate the people, train the tiny VAE, run stage1 -> stage2 -> end2end, then
evaluate the final pipeline on people generated from another seed (never seen in training). OUT receives
data/, vae/, stage1/, stage2/, end2end/ (end2end/pipeline is the trained model), heldout/, eval/, loss.png (all
stages) and timing.json (seconds per phase). With --resume, finished phases are kept and a stage in progress
continues from its latest checkpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .argument_types import integer, seed

NAME = "all"
HELP = "make data, train the VAE and all three stages, evaluate on held-out people: one command"


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="run folder, created if missing")
    parser.add_argument("--config", default="tiny", metavar="PRESET|YAML", help="training preset or YAML file")
    parser.add_argument("--identities", type=integer(2), default=400, metavar="N", help="people to generate")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the generated training people")
    parser.add_argument("--eval-identities", type=integer(1), default=48, metavar="N",
                        help="held-out people generated for the evaluation")
    parser.add_argument("--eval-seed", type=seed, default=1000,
                        help="seed of the held-out people (must differ from --seed)")
    parser.add_argument("--vae-steps", type=integer(1), metavar="N",
                        help="autoencoder training steps (default: the config's autoencoder.steps)")
    parser.add_argument("--eval-steps", type=integer(1), default=20, help="DDIM steps of the evaluation")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a training config key (repeatable)")
    parser.add_argument("--resume", action="store_true", help="keep finished phases; resume the running stage")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def run(args) -> int:
    from ..errors import InvalidArgumentError
    from ..io import OutputFolder
    from ..train.config import load_config
    from ..train.evaluation import evaluate
    from ..train.stage_training import run_all
    from ..train.synthetic.dataset import make_dataset
    from ..train.training_log import plot_loss, read_log
    from ..train.vae import train_vae

    if args.eval_seed == args.seed:
        raise InvalidArgumentError(f"--eval-seed must differ from --seed ({args.seed}): the evaluation needs people "
                                   "the model never saw.")
    out = Path(args.out)
    progress = not args.no_progress
    timing_path = out / "timing.json"
    if timing_path.is_file() and not args.resume:
        raise InvalidArgumentError(f"{out} already holds a run ({timing_path.name}); continue it with --resume, or "
                                   "give another --out (a fresh run would train its phases again over the old ones).")
    timing = read_timing(timing_path) if args.resume and timing_path.is_file() else {}

    def phase(name: str, done: bool, work) -> None:
        if args.resume and done and name in timing:
            print(f"imagpose train all: {name}: kept ({timing[name]:.0f} s before)")
            return
        started = time.perf_counter()
        work()
        timing[name] = round(time.perf_counter() - started, 1)
        timing["total"] = round(sum(v for k, v in timing.items() if k != "total"), 1)
        with OutputFolder(out) as folder:
            folder.write_json("timing.json", timing)
        print(f"imagpose train all: {name}: {timing[name]:.0f} s")

    data, vae, vae_decoder, heldout = out / "data", out / "vae", out / "vae_decoder", out / "heldout"
    vae_steps = [f"autoencoder.steps={args.vae_steps}"] if args.vae_steps else []
    config = load_config(args.config, [*args.overrides, *vae_steps, f"weights.vae={vae}"])
    def make_data():
        summary = make_dataset(data, args.identities, seed=args.seed, size=config.data.tile_size)
        print(f"imagpose train all: {summary.identities} people ({len(summary.train)} train, {len(summary.test)} "
              f"test) x {summary.views_per_identity} views at {summary.image_size[1]}x{summary.image_size[0]}")

    phase("data", (data / "dataset.json").is_file(), make_data)
    phase("vae", (vae / "vae_report.json").is_file(),
          lambda: train_vae(data, vae, config.autoencoder, seed=args.seed, preset=config.model,
                            trackers=config.trackers, resume=args.resume, progress=progress))
    results = []
    phase("stages", (out / "end2end" / "pipeline" / "model_index.json").is_file(),
          lambda: results.extend(run_all(config, data, out, resume=args.resume, progress=progress)))
    if config.autoencoder.decoder_steps:
        phase("vae_decoder", (vae_decoder / "vae_report.json").is_file(), lambda: train_final_decoder(
            data, vae, vae_decoder, out / "end2end" / "pipeline", config, seed=args.seed, resume=args.resume,
            progress=progress))
    curves = {stage: read_log(out / stage / "log.csv", 10**12) for stage in config.stages}
    with OutputFolder(out) as folder:
        plot_loss(curves, folder.path("loss.png"))
    phase("heldout_data", (heldout / "dataset.json").is_file(),
          lambda: make_dataset(heldout, args.eval_identities, seed=args.eval_seed, size=config.data.tile_size,
                               test_fraction=0.999))
    evaluation = []
    phase("eval", (out / "eval" / "summary.json").is_file(),
          lambda: evaluation.append(evaluate(out / "end2end" / "pipeline", heldout, out / "eval",
                                             steps=args.eval_steps, progress=progress)))
    if evaluation:
        print(evaluation[0].table())
    write_training_record(out, config, args, timing)
    print(f"imagpose train all: {sum(v for k, v in timing.items() if k != 'total'):.0f} s in all; the trained "
          f"pipeline is {out / 'end2end' / 'pipeline'}")
    return 0


def read_timing(path: Path) -> dict[str, float]:
    """A run's ``timing.json`` ({phase: seconds}), or an error naming the file and the fix."""
    from ..errors import InputFileError

    try:
        timing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        timing, reason = None, str(exc)
    else:
        reason = "expected {phase: seconds}"
    if not isinstance(timing, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in timing.values()):
        raise InputFileError(f"{path} is damaged ({reason}); delete it and run again with --resume (each phase "
                             "then continues from its own last checkpoint; the data is generated again, identically).")
    return timing


def train_final_decoder(data: Path, vae: Path, out: Path, pipeline: Path, config, **options) -> None:
    """The decoder phase: train the decoder of ``vae`` into ``out`` and put it in the trained ``pipeline`` (its
    encoder is unchanged, so the denoiser's latents are too)."""
    from ..autoencoders import load_autoencoder
    from ..io import OutputFolder
    from ..train.vae import train_decoder

    train_decoder(data, vae, out, config.autoencoder, preset=config.model, trackers=config.trackers, **options)
    with OutputFolder(pipeline / "vae") as folder:
        load_autoencoder(out).save_pretrained(folder.path())


def write_training_record(out: Path, config, args, timing: dict) -> None:
    """``training.json`` in the final pipeline folder: how the model was made and how it scored
    (``imagpose.pretrained.training_record`` reads it; the demo takes its tile size from it)."""
    from ..io import OutputFolder
    from ..pretrained import TRAINING_RECORD

    def read(path: Path):
        return json.loads(path.read_text()) if path.is_file() else None

    vae_report = read(out / "vae" / "vae_report.json") or {}
    record = {
        "tile_size": list(config.data.tile_size),
        "grid": list(config.data.grid),
        "command": "imagpose train all " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in (
            ("identities", args.identities), ("seed", args.seed), ("eval_identities", args.eval_identities),
            ("eval_seed", args.eval_seed), ("config", args.config)))
        + "".join(f" --set {item}" for item in args.overrides)
        + (f" --vae-steps {args.vae_steps}" if args.vae_steps else ""),
        "data": {"identities": args.identities, "seed": args.seed, "generator": "imagpose.train.synthetic"},
        "held_out": {"identities": args.eval_identities, "seed": args.eval_seed},
        "seconds": timing,
        **{name: {key: report.get(key) for key in ("class", "parameters", "psnr", "held_out_people",
                                                   "colour_round_trip", "seconds")}
           for name, report in (("vae", vae_report), ("vae_decoder", read(out / "vae_decoder" / "vae_report.json")))
           if report},
        "final_losses": {stage: rows[-1]["loss"] for stage in config.stages
                         if (rows := _log_rows(out / stage / "log.csv"))},
        "evaluation": read(out / "eval" / "summary.json"),
        "config": config.to_dict(),
    }
    record["config"]["weights"]["vae"] = "OUT/vae"  # the run folder's VAE, not this machine's path
    with OutputFolder(out / "end2end" / "pipeline") as folder:
        folder.write_json(TRAINING_RECORD, record)


def _log_rows(path: Path) -> list[dict]:
    from ..train.training_log import read_log

    return read_log(path, 10**12)
