"""The report of ``imagpose bench quality``: results.json, results.csv, report.md and the speed/quality plot."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from imagpose.io import OutputFolder
from imagpose.measures import MEASURES

from .quality import QUALITY_BUDGET

REPORT_FILES = ("report.md", "results.json", "results.csv", "speed_quality.png")


def write_quality_report(results: dict, folder: OutputFolder) -> tuple[str, ...]:
    """Write :data:`REPORT_FILES` into ``folder`` (they appear in its target when the ``with`` block ends)."""
    folder.write_json("results.json", results)
    folder.path("results.csv").write_text(_csv(results["results"]), encoding="utf-8")
    _plot(results, folder.path("speed_quality.png"))
    folder.path("report.md").write_text(markdown(results), encoding="utf-8")
    return REPORT_FILES


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["setting", "sampler", "num_inference_steps", "guidance_scale", "guidance_interval",
                     "deepcache_interval", "deepcache_branch", "unet", "model", "seconds_per_image", "speedup",
                     "full_size_gflops_per_image", "flop_ratio", "ssim_vs_default", "psnr_vs_default",
                     *[f"{m}_vs_truth" for m in MEASURES], "pareto"])
    for row in rows:
        s, sampling = row["setting"], row["setting"]["sampling"]
        deepcache = sampling["deepcache"] or {"interval": None, "branch": None}  # None: DeepCache off
        writer.writerow([s["name"], sampling["sampler"], sampling["num_inference_steps"], sampling["guidance_scale"],
                         sampling["guidance_interval"], deepcache["interval"], deepcache["branch"], s["unet"],
                         s.get("model") or "", f"{row['seconds_per_image']:.4f}",
                         row["speedup"], f"{row['flops_per_image'] / 1e9:.1f}", row["flop_ratio"],
                         row["vs_default"]["ssim"], row["vs_default"]["psnr"],
                         *[row["vs_ground_truth"][m] for m in MEASURES], row["pareto"]])
    return buffer.getvalue()


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = ["# Speed and quality of the fast-sampling options", "",
             f"Model `{results['model']}`, {results['items']} held-out people from `{results['data']}` (T2, "
             f"{results['tile_size'][0]}x{results['tile_size'][1]} tiles, batches of {results['batch_size']}); "
             f"device: {env.get('device_name', env.get('cpu', 'cpu'))}, torch {env.get('torch', '?')}. Seconds per "
             "image are wall time over every item in one run; the default was timed first and last "
             f"({results['default_seconds_runs'][0]:.3f} and {results['default_seconds_runs'][1]:.3f} s/image) and "
             "speedups use their mean. FLOPs: the whole pipeline call at the full-size architecture, 512x512 tiles, "
             "counted on the meta device (projects the GPU gain). Drops are the default minus the setting "
             "(positive = worse; colour error: negative = worse).", "",
             "| setting | s/image | speedup | full-size TFLOPs | FLOP ratio | SSIM vs default | PSNR vs default "
             "| SSIM | PSNR | pose IoU | colour err | SSIM drop | pose drop | Pareto |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["results"]:
        truth, drop = row["vs_ground_truth"], row["drop"]
        lines.append(f"| {row['setting']['name']} | {row['seconds_per_image']:.3f} | {row['speedup']:.2f}x "
                     f"| {row['flops_per_image'] / 1e12:.2f} | {row['flop_ratio']:.2f}x "
                     f"| {row['vs_default']['ssim']:.4f} "
                     f"| {row['vs_default']['psnr']:.2f} | {truth['ssim']:.4f} | {truth['psnr']:.2f} "
                     f"| {truth['pose_iou']:.4f} | {truth['color_error']:.2f} | {drop['ssim']:+.4f} "
                     f"| {drop['pose_iou']:+.4f} | {'yes' if row['pareto'] else ''} |")
    budget = ", ".join(f"{m} drop <= {v}" for m, v in QUALITY_BUDGET.items())
    lines += ["", "## Best settings by speedup", "",
              f"The setting closest to the default's output (SSIM against it) among those at least this much faster "
              f"whose ground-truth drops stay within the budget ({budget}).", "",
              "| at least | setting | speedup | FLOP ratio | SSIM drop | pose drop | SSIM vs default |",
              "|---|---|---|---|---|---|---|"]
    for target, pick in results["best_at"].items():
        if pick is None:
            lines.append(f"| {target} | none this fast | | | | | |")
        else:
            lines.append(f"| {target} | {pick['name']} | {pick['speedup']:.2f}x | {pick['flop_ratio']:.2f}x "
                         f"| {pick['drop']['ssim']:+.4f} | {pick['drop']['pose_iou']:+.4f} "
                         f"| {pick['vs_default']['ssim']:.4f} |")
    lines += ["", f"## At least 3x faster with {budget}", ""]
    if results["within_budget"]:
        lines += [f"- {r['name']}: {r['speedup']:.2f}x (FLOP ratio {r['flop_ratio']:.2f}x), SSIM drop "
                  f"{r['drop']['ssim']:+.4f}, pose drop {r['drop']['pose_iou']:+.4f}, SSIM vs default "
                  f"{r['ssim_vs_default']:.4f}" for r in results["within_budget"]]
    else:
        lines.append("- none in this run")
    lines += ["", "![speed and quality](speed_quality.png)", ""]
    return "\n".join(lines)


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["results"]
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
    for axis, (key, label) in zip(axes, (("vs_ground_truth", "SSIM against the ground truth"),
                                         ("vs_default", "SSIM against the default's output"))):
        for row in rows:
            colour = "tab:red" if row["pareto"] else "tab:blue"
            student = bool(row["setting"].get("model"))  # a distilled student: a star
            axis.scatter(row["speedup"], row[key]["ssim"], color=colour, s=90 if student else 28,
                         marker="*" if student else "o", zorder=3)
            axis.annotate(row["setting"]["name"], (row["speedup"], row[key]["ssim"]), fontsize=6,
                          xytext=(3, 2), textcoords="offset points")
        if key == "vs_default":
            front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["speedup"])
            axis.plot([r["speedup"] for r in front], [r[key]["ssim"] for r in front], color="tab:red",
                      label="Pareto front (speed, SSIM vs default)", zorder=2)
            _student_legend(axis, rows)
            axis.legend(loc="lower left", fontsize=8)
        else:
            default = rows[0][key]["ssim"]
            axis.axhline(default - QUALITY_BUDGET["ssim"], color="grey", linestyle=":",
                         label=f"default - {QUALITY_BUDGET['ssim']}")
            _student_legend(axis, rows)
            axis.legend(loc="lower left", fontsize=8)
        axis.axvline(3.0, color="grey", linestyle="--", linewidth=0.8)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("speedup per image over the default (log scale; measured on this device)")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
    fig.suptitle(f"Fast-sampling options on {results['items']} held-out people ({Path(results['model']).name})")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _student_legend(axis, rows: list[dict]) -> None:
    if any(row["setting"].get("model") for row in rows):
        axis.scatter([], [], marker="*", s=90, color="grey", label="distilled few-step student (its own model)")
