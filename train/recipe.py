"""The ``imagpose train all`` recipe, callable without a command line: generate the people, train the tiny
autoencoder, run stage1 -> stage2 -> end2end, train the decoder alone (when the config asks), then evaluate the
final pipeline on people generated from another seed (never seen in training).

    from imagpose.train.recipe import RecipeOptions, train_all
    result = train_all("runs/tiny", "tiny", RecipeOptions(identities=400))
    result.pipeline      # runs/tiny/end2end/pipeline, the trained model (with training.json)

``out`` receives data/, vae/, stage1/, stage2/, end2end/, vae_decoder/, heldout/, eval/, loss.png (all stages) and
timing.json (seconds per phase). With ``resume``, finished phases are kept and a stage in progress continues from
its latest checkpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from imagpose.errors import InvalidArgumentError
from imagpose.io import OutputFolder
from imagpose.seeds import HELD_OUT_PEOPLE_SEED, TRAINING_PEOPLE_SEED, check_seed

from .training_log import plot_loss, read_log


@dataclass(frozen=True)
class RecipeOptions:
    """What ``train_all`` makes, besides the training config: the people and the evaluation."""

    identities: int = 400  # people generated for training
    seed: int = TRAINING_PEOPLE_SEED  # their seed
    eval_identities: int = 48  # held-out people generated for the evaluation
    eval_seed: int = HELD_OUT_PEOPLE_SEED  # their seed: must differ from ``seed``
    vae_steps: int | None = None  # autoencoder steps (None: the config's autoencoder.steps)
    eval_steps: int = 20  # DDIM steps of the evaluation
    overrides: tuple[str, ...] = ()  # KEY=VALUE overrides of the training config
    config: str = "tiny"  # training preset or YAML file, as given (recorded in training.json)

    def __post_init__(self):
        for name, least in (("identities", 2), ("eval_identities", 1), ("eval_steps", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InvalidArgumentError(f"{name} must be an integer >= {least}, got {value!r}.")
        if self.vae_steps is not None and (isinstance(self.vae_steps, bool) or not isinstance(self.vae_steps, int)
                                           or self.vae_steps < 1):
            raise InvalidArgumentError(f"vae_steps must be an integer >= 1 or None, got {self.vae_steps!r}.")
        check_seed(self.seed, "seed"), check_seed(self.eval_seed, "eval_seed")
        if self.eval_seed == self.seed:
            raise InvalidArgumentError(f"--eval-seed must differ from --seed ({self.seed}): the evaluation needs "
                                       "people the model never saw.")

    def command(self) -> str:
        """The command line that makes this run."""
        return ("imagpose train all " + " ".join(f"--{k.replace('_', '-')} {getattr(self, k)}" for k in (
            "identities", "seed", "eval_identities", "eval_seed", "config"))
            + "".join(f" --set {item}" for item in self.overrides)
            + (f" --vae-steps {self.vae_steps}" if self.vae_steps else ""))


@dataclass
class RecipeResult:
    pipeline: Path  # the trained model
    timing: dict[str, float]  # seconds per phase, and their total
    evaluation: object | None = None  # imagpose.train.evaluation.Evaluation, when this call ran it
    stages: list = field(default_factory=list)  # the StageResults of the stages this call ran


def train_all(out: str | Path, options: RecipeOptions = RecipeOptions(), *, resume: bool = False,
              progress: bool = True, log: Callable[[str], None] = print) -> RecipeResult:
    """Run the whole recipe into ``out`` (see the module docstring); ``log`` receives one line per phase."""
    from imagpose.synthetic.dataset import make_dataset

    from .config import load_config
    from .evaluation import evaluate
    from .stage_training import run_all
    from .vae import train_vae

    out = Path(out)
    timing_path = out / "timing.json"
    if timing_path.is_file() and not resume:
        raise InvalidArgumentError(f"{out} already holds a run ({timing_path.name}); continue it with --resume, or "
                                   "give another --out (a fresh run would train its phases again over the old ones).")
    timing = read_timing(timing_path) if resume and timing_path.is_file() else {}

    def phase(name: str, done: bool, work) -> None:
        if resume and done and name in timing:
            log(f"imagpose train all: {name}: kept ({timing[name]:.0f} s before)")
            return
        started = time.perf_counter()
        work()
        timing[name] = round(time.perf_counter() - started, 1)
        timing["total"] = round(sum(v for k, v in timing.items() if k != "total"), 1)
        with OutputFolder(out) as folder:
            folder.write_json("timing.json", timing)
        log(f"imagpose train all: {name}: {timing[name]:.0f} s")

    data, vae, vae_decoder, heldout = out / "data", out / "vae", out / "vae_decoder", out / "heldout"
    pipeline = out / "end2end" / "pipeline"
    vae_steps = [f"autoencoder.steps={options.vae_steps}"] if options.vae_steps else []
    config = load_config(options.config, [*options.overrides, *vae_steps, f"weights.vae={vae}"])
    result = RecipeResult(pipeline, timing)

    def make_data():
        summary = make_dataset(data, options.identities, seed=options.seed, size=config.data.tile_size)
        log(f"imagpose train all: {summary.identities} people ({len(summary.train)} train, {len(summary.test)} "
            f"test) x {summary.views_per_identity} views at {summary.image_size[1]}x{summary.image_size[0]}")

    phase("data", (data / "dataset.json").is_file(), make_data)
    phase("vae", (vae / "vae_report.json").is_file(),
          lambda: train_vae(data, vae, config.autoencoder, seed=options.seed, preset=config.model,
                            trackers=config.trackers, resume=resume, progress=progress))
    phase("stages", (pipeline / "model_index.json").is_file(),
          lambda: result.stages.extend(run_all(config, data, out, resume=resume, progress=progress)))
    if config.autoencoder.decoder_steps:
        phase("vae_decoder", (vae_decoder / "vae_report.json").is_file(), lambda: train_final_decoder(
            data, vae, vae_decoder, pipeline, config, seed=options.seed, resume=resume, progress=progress))
    curves = {stage: read_log(out / stage / "log.csv", 10**12) for stage in config.stages}
    with OutputFolder(out) as folder:
        plot_loss(curves, folder.path("loss.png"))
    phase("heldout_data", (heldout / "dataset.json").is_file(),
          lambda: make_dataset(heldout, options.eval_identities, seed=options.eval_seed, size=config.data.tile_size,
                               test_fraction=0.999))

    def run_evaluation():
        result.evaluation = evaluate(pipeline, heldout, out / "eval", steps=options.eval_steps, progress=progress)

    phase("eval", (out / "eval" / "summary.json").is_file(), run_evaluation)
    write_training_record(out, config, options, timing)
    return result


def read_timing(path: Path) -> dict[str, float]:
    """A run's ``timing.json`` ({phase: seconds}), or an error naming the file and the fix."""
    from imagpose.errors import InputFileError

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
    from imagpose.autoencoders import load_autoencoder
    from imagpose.io import OutputFolder

    from .vae import train_decoder

    train_decoder(data, vae, out, config.autoencoder, preset=config.model, trackers=config.trackers, **options)
    vae = load_autoencoder(out)
    vae.register_to_config(_name_or_path=f"OUT/{out.name}")  # the run folder's decoder, not this machine's path
    with OutputFolder(pipeline / "vae") as folder:
        vae.save_pretrained(folder.path())


def write_training_record(out: Path, config, options: RecipeOptions, timing: dict) -> None:
    """``training.json`` in the final pipeline folder: how the model was made and how it scored
    (``imagpose.pretrained.training_record`` reads it; the demo takes its tile size from it)."""
    from imagpose.io import OutputFolder
    from imagpose.pretrained import TRAINING_RECORD

    def read(path: Path):
        return json.loads(path.read_text()) if path.is_file() else None

    vae_report = read(out / "vae" / "vae_report.json") or {}
    record = {
        "tile_size": list(config.data.tile_size),
        "grid": list(config.data.grid),
        "command": options.command(),
        "data": {"identities": options.identities, "seed": options.seed, "generator": "imagpose.synthetic"},
        "held_out": {"identities": options.eval_identities, "seed": options.eval_seed},
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
    if record["evaluation"]:
        settings = record["evaluation"]["settings"]
        for key in ("model", "data"):
            settings[key] = _relative_to_run(settings[key], out)
    with OutputFolder(out / "end2end" / "pipeline") as folder:
        folder.write_json(TRAINING_RECORD, record)


def _relative_to_run(path: str, out: Path) -> str:
    """``path`` as ``OUT/...`` when it lies inside the run folder ``out`` (the record travels with the model)."""
    try:
        return "OUT/" + Path(path).resolve().relative_to(out.resolve()).as_posix()
    except ValueError:
        return path


def _log_rows(path: Path) -> list[dict]:
    return read_log(path, 10**12)
