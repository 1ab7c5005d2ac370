"""The supervisor of scripts/gpu_checks.py: runs each selected section in its own child process (the same script
with ``--section``), copies the results the child records into the report as they come, kills the child's process
group when it outlives its time budget, and moves on to the next section. Standard library only: a broken
install still gets its report."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpu_report import REPORT_MD, Report, now, read_json
from gpu_sections import SECTIONS, Section

ENTRY = Path(__file__).resolve().with_name("gpu_checks.py")  # the command line; its --section runs one section
LOG_NAME = "gpu_checks.log"
POLL_SECONDS = 0.5


def budget(section: Section, args) -> float:
    return round(section.budget_s * args.budget_scale, 1)


def run_section(section: Section, args, report: Report, status_dir: Path, log_path: Path) -> str:
    """Run one section in a child process within its budget; returns its final status."""
    status_file = status_dir / f"{section.name}.json"
    limit = budget(section, args)
    command = [sys.executable, str(ENTRY), "--section", section.name, "--status-file",
               str(status_file), "--out", str(Path(args.out).resolve()), "--workdir", str(Path(args.workdir).resolve()),
               "--tile", str(args.tile),
               *(["--dry-run"] if args.dry_run else [])]
    with open(log_path, "a") as log:
        log.write(f"\n===== {section.name} (budget {limit:g} s) {now()} =====\n")
        log.flush()
        # own process group: a timeout kills the section's grandchildren too (pytest, compilers); same session,
        # so whatever ends this command's session still ends them
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_environment(args),
                                 preexec_fn=os.setpgrp)
    start, cpu_start = time.monotonic(), children_cpu_seconds()
    report.update(section.name, status="running", started=now())
    seen, timed_out = None, False
    try:
        while True:
            try:
                child.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            seen = forward_records(section.name, status_file, seen, report, start)
            if child.returncode is not None:
                break
            if time.monotonic() - start > limit:
                timed_out = True
                break
    finally:
        if child.returncode is None:  # timed out, or this process is being stopped
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    seconds = round(time.monotonic() - start, 1)
    state = read_json(status_file) or {}
    fields = {"seconds": seconds, "cpu_seconds": round(children_cpu_seconds() - cpu_start, 1), "pid": child.pid,
              "results": state.get("results", {})}
    if timed_out:
        fields["status"] = f"timeout after {limit:g} s"
    elif state.get("status") == "ok":
        fields["status"] = "ok"
    else:
        fields.update(status="error", error=state.get("error") or f"the section's process exited with code "
                      f"{child.returncode} without a result", traceback=state.get("traceback"))
    if fields["status"] != "ok":
        fields["log_tail"] = log_tail(log_path)
    report.update(section.name, **fields)
    print(f"[gpu_checks] {section.name}: {fields['status']} in {seconds:g} s"
          + (f" ({fields['error']})" if "error" in fields else ""), flush=True)
    return fields["status"]


def forward_records(name: str, status_file: Path, seen, report: Report, start: float):
    """Copy the child's latest records into the report (when its status file changed); returns the new stamp."""
    try:
        stat = status_file.stat()
    except FileNotFoundError:
        return seen
    stamp = (stat.st_mtime_ns, stat.st_size)
    if stamp == seen:
        return seen
    state = read_json(status_file)
    if state is None:
        return seen
    previous = report.data["sections"][name].get("results", {})
    for key, value in state["results"].items():
        if previous.get(key) != value:
            print(f"[gpu_checks] {name} +{time.monotonic() - start:.0f}s {key}: "
                  f"{json.dumps(value, default=str)[:300]}", flush=True)
    report.update(name, results=state["results"], pid=state["pid"])
    return stamp


def children_cpu_seconds() -> float:
    """User + system CPU time of every finished child process (the sections and what they started)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def child_environment(args) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.dry_run:
        env["TRITON_INTERPRET"] = "1"  # read when triton is imported: before anything in the child imports it
    else:
        env.pop("TRITON_INTERPRET", None)  # a leftover from CPU work would time Python instead of the kernels
    return env


def log_tail(path: Path, chars: int = 3000) -> str:
    with open(path, "rb") as log:
        log.seek(max(0, path.stat().st_size - chars))
        return log.read().decode(errors="replace")


def selected_sections(args) -> list[Section]:
    """``--only`` (all when not given) less ``--skip``, in priority order."""
    return [s for s in SECTIONS if (not args.only or s.name in args.only) and s.name not in (args.skip or ())]


def run_parent(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    own_workdir = args.workdir is None
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="imagpose-gpu-checks-")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    status_dir = Path(tempfile.mkdtemp(prefix="sections-", dir=args.workdir))
    sections = selected_sections(args)
    log_path = out / LOG_NAME
    log_path.write_text(f"imagpose GPU checks {'(dry run) ' if args.dry_run else ''}{now()}\n")
    report = Report(out, args, {s.name: budget(s, args) for s in sections})
    report.write()
    # SIGTERM (e.g. `timeout`) unwinds like Ctrl-C, so the running section's process group is killed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        statuses = [run_section(s, args, report, status_dir, log_path) for s in sections]
    finally:
        shutil.rmtree(status_dir, ignore_errors=True)
        if own_workdir:
            shutil.rmtree(args.workdir, ignore_errors=True)
    report.data["finished"] = True
    report.write()
    print(f"[gpu_checks] report: {out / REPORT_MD}", flush=True)
    return 0 if all(status == "ok" for status in statuses) else 1
