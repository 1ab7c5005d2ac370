"""The report of scripts/gpu_checks.py: gpu_report.json and gpu_report.md, rewritten atomically whenever a section
records a result or ends, so a run cut short still leaves what finished. Standard library only (the parent process
imports nothing heavy)."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

REPORT_JSON, REPORT_MD = "gpu_report.json", "gpu_report.md"
UMASK = os.umask(0o022)  # the process's umask: reading it means setting it, so it is set back at once
os.umask(UMASK)


# ----------------------------------------------------------------------------- files
def json_safe(value):
    """Strict JSON: non-finite floats (an SQNR of identical outputs is inf) become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` beside ``path`` and rename it over ``path``.

    Not ``imagpose.io.atomic_file``, which does the same: the parent process must write its report even where
    imagpose cannot be imported (a broken install is what the env section then reports), and importing any
    imagpose module runs ``imagpose/__init__.py``, which imports torch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; a report gets the mode of any new file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data) -> None:
    write_atomic(path, json.dumps(json_safe(data), indent=2, default=str, allow_nan=False) + "\n")


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ----------------------------------------------------------------------------- the report
class Report:
    """gpu_report.json and gpu_report.md, rewritten whenever anything changes."""

    def __init__(self, out: Path, args, budgets: dict[str, float]):
        self.out = out
        self.data = {"title": "imagpose GPU checks", "dry_run": args.dry_run, "budget_scale": args.budget_scale,
                     "started": now(), "updated": now(), "finished": False,
                     "sections": {name: {"status": "pending", "budget_s": budget} for name, budget in budgets.items()}}

    def update(self, name: str, **fields) -> None:
        self.data["sections"][name].update(fields)
        self.write()

    def write(self) -> None:
        self.data["updated"] = now()
        write_json(self.out / REPORT_JSON, self.data)
        write_atomic(self.out / REPORT_MD, markdown(self.data))


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


# ----------------------------------------------------------------------------- markdown
def markdown(data: dict) -> str:
    mode = "dry run (CPU, tiny sizes)" if data["dry_run"] else "GPU run"
    lines = [f"# {data['title']}", "", f"{mode}; started {data['started']}, updated {data['updated']}"
             f"{'' if data['finished'] else ' (not finished)'}; budget scale {data['budget_scale']:g}", "",
             "| section | status | seconds | CPU seconds | budget s |", "|---|---|---|---|---|"]
    for name, entry in data["sections"].items():
        lines.append(f"| {name} | {entry['status']} | {entry.get('seconds', '')} | {entry.get('cpu_seconds', '')} | "
                     f"{entry['budget_s']:g} |")
    for name, entry in data["sections"].items():
        lines += ["", f"## {name}", "", f"Status: **{entry['status']}**", ""]
        if entry.get("error"):
            lines += ["```", entry["error"], "```", ""]
        for key, value in entry.get("results", {}).items():
            lines += markdown_value(key, value)
        for key in ("traceback", "log_tail"):
            if entry.get(key):
                lines += [f"<details><summary>{key}</summary>", "", "```", entry[key].rstrip(), "```", "",
                          "</details>", ""]
    return "\n".join(lines) + "\n"


def markdown_value(key: str, value) -> list[str]:
    if isinstance(value, dict) and all(is_flat(v) for v in value.values()):
        return [f"**{key}**", "", "| | |", "|---|---|", *(f"| {k} | {cell(v)} |" for k, v in value.items()), ""]
    if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
        columns = list(dict.fromkeys(k for row in value for k in row))
        return [f"**{key}**", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
                *("| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in value), ""]
    if isinstance(value, str) and "\n" in value:
        return [f"**{key}**", "", "```", value, "```", ""]
    if is_flat(value):
        return [f"- **{key}**: {cell(value)}", ""]
    return [f"**{key}**", "", "```json", json.dumps(value, indent=1, default=str), "```", ""]


def is_scalar(value) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def is_flat(value) -> bool:
    """A scalar or a list of scalars: one table cell."""
    return is_scalar(value) or (isinstance(value, list) and all(is_scalar(v) for v in value))


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")
