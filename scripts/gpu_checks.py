"""Every GPU-only check of the project in one call, with a report that survives timeouts.

On a machine with a CUDA GPU (docs/gpu.md: the wheels it needs and the one-line command):

    python3 scripts/gpu_checks.py --out gpu-report/             # every section, about 8 minutes at most
    python3 scripts/gpu_checks.py --out gpu-report/ --only trt --budget-scale 3
    python3 scripts/gpu_checks.py --out outputs/gpu-dry --dry-run   # the same sections on the CPU, tiny sizes

Sections, in priority order (what a CPU cannot show comes first), each with its own time budget in seconds:
    env       (30)   nvidia-smi, GPU properties, versions of everything the sections import
    cva       (100)  the full-size (SD1.5) UNet step in fp16 with the CVA backends eager / sdpa / triton: median
                     latency and SQNR of each against eager
    kernels   (100)  the Triton kernel tests on CUDA, then ``imagpose.kernels.bench`` (one kernel at a time)
    bench     (130)  the full-size benchmark suite (``imagpose.bench.harness``), scenarios in priority order, each
                     recorded as it finishes; the fast paths' output parity; the benchmark report under OUT/bench
    trt       (120)  fp16 ONNX export of the full UNet, check-trt, the engine plan; with tensorrt importable also
                     the engine build, step latency TensorRT vs PyTorch fp16 and parity against fp32; without it
                     the section stops right before the builder and says why
    train     (240)  one full-size (SD1.5) training step of each stage (stage1, stage2, end2end) at 512x512 tiles,
                     bf16 autocast over fp32 weights, gradient checkpointing, AdamW: samples/s and peak memory
    quant     (240)  the full UNet quantized to INT8 and FP8 (Model Optimizer) beside fp16: export, check-trt; with
                     tensorrt one engine each (FP8: compute capability 8.9+): step latency and SQNR against fp32
    serve     (120)  fp16 engines of every network, the Triton tensorrt_plan repository written from them and
                     validated; the TensorRT pipeline's latency and throughput at 1, 4 and 16 concurrent clients

The budgets sum to 18 minutes, more than one 10-minute command allows: run them as three calls in priority order,
``--skip train --skip quant --skip serve``, ``--only env --only quant --only serve`` and ``--only env --only train``
(docs/gpu.md).

Each section runs in its own child process. The parent imports nothing heavy: it starts the child, reads the
results the child records (a JSON status file, rewritten atomically after every record), kills the child's
process group when it outlives its budget (``--budget-scale`` scales every budget) and records
"timeout after N s" with the results recorded so far; then the next section runs. OUT/gpu_report.json and
OUT/gpu_report.md are rewritten after every record and every section, so a run cut short (a section or the
whole command) still returns what finished. The children's output goes to OUT/gpu_checks.log. The sections and
their sizes are in gpu_sections.py, the parent's side in gpu_supervisor.py, the report files in gpu_report.py.

``--dry-run`` runs every section end to end on the CPU at tiny sizes (tiny preset, 64x64 tiles, one step, fp32, the
Triton kernels under the interpreter): the same functions as the GPU run with smaller arguments (``DRY_RUN`` in
gpu_sections.py), so CI proves the GPU run's code paths (tests/scripts/test_gpu_checks.py). The exit code is 0 when
every section ends "ok", else 1.
"""

from __future__ import annotations

import argparse
import sys

from gpu_sections import SECTION_NAMES, run_child
from gpu_supervisor import run_parent


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/gpu", help="report folder (gpu_report.json/.md, the log, bench/)")
    parser.add_argument("--only", action="append", choices=SECTION_NAMES,
                        help="run only this section (repeatable; sections still run in priority order)")
    parser.add_argument("--skip", action="append", choices=SECTION_NAMES, help="leave this section out (repeatable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="every section on the CPU at tiny sizes (tiny preset, 64x64 tiles, Triton interpreter)")
    parser.add_argument("--budget-scale", type=float, default=1.0,
                        help="multiply every section's time budget (default budgets sum to 18 minutes)")
    parser.add_argument("--workdir", default=None,
                        help="folder for ONNX exports and engines, kept for reuse (default: a temporary folder, "
                             "removed at the end)")
    parser.add_argument("--tile", type=int, default=512,
                        help="square tile size of the cva, trt and train checks (GPU run)")
    parser.add_argument("--section", choices=SECTION_NAMES, help=argparse.SUPPRESS)  # the child's side
    parser.add_argument("--status-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.budget_scale > 0:
        parser.error(f"--budget-scale must be > 0, got {args.budget_scale}")
    if args.tile < 64 or args.tile % 64:
        parser.error(f"--tile must be a positive multiple of 64 (the SD1.5 UNet's padding), got {args.tile}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_child(args) if args.section else run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
