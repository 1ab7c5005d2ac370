"""A training run's log: ``log.csv`` (step, loss, LR, samples/s, seconds) and ``loss.png``, rewritten atomically at
every checkpoint; a resumed run reads the rows up to its checkpoint back."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from imagpose.errors import InputFileError
from imagpose.io import OutputFolder

LOG_FIELDS = ("step", "loss", "lr", "samples_per_second", "seconds")


def write_log(out: Path, rows: list[dict]) -> None:
    """log.csv and loss.png, replaced atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=LOG_FIELDS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{row[k]:.6g}" if isinstance(row[k], float) else row[k] for k in LOG_FIELDS})
    with OutputFolder(out) as folder:
        folder.path("log.csv").write_text(text.getvalue())
        if rows:
            plot_loss({out.name or "run": rows}, folder.path("loss.png"))


def read_log(path: Path, up_to_step: int) -> list[dict]:
    """The rows of log.csv up to ``up_to_step`` (a resumed run rewrites what came after its checkpoint)."""
    if not path.is_file():
        return []
    fix = "move it aside to resume (the loss curve then starts at the checkpoint)"
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is not None and "step" not in reader.fieldnames:
            raise InputFileError(f"{path} has no step column, so it is not the loss log this trainer writes; {fix}.")
        try:
            rows = [{k: (int(v) if k == "step" else float(v)) for k, v in row.items()} for row in reader]
        except (TypeError, ValueError, csv.Error) as exc:  # a non-number, a short row (None), a broken quote
            raise InputFileError(f"{path} line {reader.line_num} is not a row of the loss log this trainer writes "
                                 f"({exc}); {fix}.") from None
    return [row for row in rows if row["step"] <= up_to_step]


def require_matplotlib() -> None:
    """loss.png needs matplotlib: fail before training, not at the first checkpoint."""
    import importlib.util

    from imagpose.errors import MissingDependencyError

    if importlib.util.find_spec("matplotlib") is None:
        raise MissingDependencyError("Training plots its loss with matplotlib, which is not installed: "
                                     "pip install -c constraints.txt 'imagpose[train]'.")


def plot_loss(curves: dict[str, list[dict]], path: Path, smoothing: int = 20) -> None:
    """Loss against step for each run (raw, and a running mean over ``smoothing`` logged steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.4), squeeze=False)
    for axis, (name, rows) in zip(axes[0], curves.items()):
        steps = [r["step"] for r in rows]
        losses = [r["loss"] for r in rows]
        axis.plot(steps, losses, color="0.75", linewidth=0.8, label="loss")
        window = max(1, min(smoothing, len(losses)))
        smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
                  for i in range(len(losses))]
        axis.plot(steps, smooth, color="C0", linewidth=1.5, label=f"running mean ({window})")
        positive = [loss for loss in losses if loss > 0]
        if positive and len(positive) == len(losses) and max(positive) > 20 * min(positive):
            axis.set_yscale("log")  # a start far above the rest would flatten the curve that matters
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.set_ylabel("loss")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
