"""Benchmark of the CVA kernels against their PyTorch counterparts, declared as data.

Every case is one kernel at one UNet level of one canvas, with batch 2 (CFG) and the official 2x2 grid:
level l of the SD1.5 UNet has C = 320/640/1280/1280 channels (8 heads: head_dim 40/80/160/160) on the latent
canvas (pixels / 8) / 2**l. Each case reports the median time, the achieved bandwidth over the bytes that must
move (read the inputs once, write the output once), and on CUDA the ratio of the HBM floor
(bytes / peak bandwidth) to the measured time, i.e. the fraction of the bandwidth roofline reached.

Providers: ``eager`` (the eager CVA code: the ``*_ref`` functions with ``upcast=False``), ``sdpa``
(``F.scaled_dot_product_attention``, attention only), ``triton`` (the fused kernels). Timing is
:func:`imagpose.timing.time_runs` (device-synchronised, median of runs) over back-to-back calls; on CUDA the
calls cycle through enough copies of the inputs to overflow the L2 cache twice, so every call reads from HBM, as
the floor assumes. On CPU only eager and sdpa run: Triton there is the interpreter, whose timings measure
Python, not a kernel.

    python -P -m imagpose.kernels.bench                       # table on CUDA if present, else CPU
    python -P -m imagpose.kernels.bench --json bench.json --kernels attention --canvas 1024x1024

(``-P``, Python >= 3.11: started in the repository root, Python would otherwise also find this folder as a
top-level ``kernels``; any other working directory needs no flag.)
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from imagpose.models.cva_ops import eager_attention, sdpa_attention
from imagpose.timing import time_runs

from .attention import cross_view_attention
from .group_norm import group_norm_to_tokens, group_norm_to_tokens_ref
from .join import tokens_to_canvas, tokens_to_canvas_ref
from .layer_norm import layer_norm_view_pe, layer_norm_view_pe_ref

CANVASES = ((512, 384), (1024, 1024))  # canvas (height, width) in pixels
LEVEL_CHANNELS = (320, 640, 1280, 1280)  # SD1.5 block_out_channels
BATCH = 2  # CFG
GRID = (2, 2)
HEADS = 8
LEVELS = (0, 1, 2, 3)
NORM_GROUPS = 32
H100_PEAK_GBPS = 3350.0  # H100 SXM5 HBM3
PEAK_GBPS = {"H100 PCIe": 2000.0, "H100": H100_PEAK_GBPS, "H200": 4800.0}  # first name match wins
CPU_NOTE = "CPU: eager/sdpa only (Triton on CPU is the interpreter: its time measures Python, not a kernel)"
RUNS = 5  # timed runs per measurement (the median is reported)
MIN_RUN_SECONDS = 0.02  # a timed run repeats the call for about this long
MAX_INPUT_COPIES = 512


@dataclass(frozen=True)
class Case:
    """One kernel call at one UNet level: canvas (B, C, R*h, Cg*w) <-> tokens (N = B*h*w, V, C)."""

    kernel: str
    canvas: tuple[int, int]
    level: int
    dtype: torch.dtype

    @property
    def channels(self) -> int:
        return LEVEL_CHANNELS[self.level]

    @property
    def latent(self) -> tuple[int, int]:
        return self.canvas[0] // 8 // 2**self.level, self.canvas[1] // 8 // 2**self.level

    @property
    def views(self) -> int:
        return GRID[0] * GRID[1]

    @property
    def positions(self) -> int:
        return BATCH * self.latent[0] * self.latent[1] // self.views

    @property
    def bytes_moved(self) -> int:
        """Compulsory traffic: every input read once, the output written once (weights and PE ignored)."""
        tensor_bytes = self.positions * self.views * self.channels * self.dtype.itemsize  # = canvas bytes
        return tensor_bytes * KERNELS[self.kernel].tensors_moved


@dataclass(frozen=True)
class KernelSpec:
    tensors_moved: int  # canvas-sized tensors read + written
    providers: dict[str, Callable[[dict], torch.Tensor]]  # provider -> fn(inputs)


def _attention_inputs(case: Case, device: str) -> dict:
    n, v, c = case.positions, case.views, case.channels
    # (N, heads, V, d) views of (N, V, C) Linear outputs, exactly as the CVA passes them
    qkv = [torch.randn(n, v, c, device=device, dtype=case.dtype).reshape(n, v, HEADS, -1).transpose(1, 2)
           for _ in range(3)]
    return dict(qkv=qkv, scale=(c // HEADS) ** -0.5)


def _attention(fn):
    def run(inputs: dict) -> torch.Tensor:  # includes the CVA's output reshape to (N, V, C)
        out = fn(*inputs["qkv"], inputs["scale"])
        return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)

    return run


def _canvas_inputs(case: Case, device: str) -> dict:
    (height, width), c = case.latent, case.channels
    return dict(
        canvas=torch.randn(BATCH, c, height, width, device=device, dtype=case.dtype),
        tokens=torch.randn(case.positions, case.views, c, device=device, dtype=case.dtype),
        weight=torch.randn(c, device=device, dtype=case.dtype),
        bias=torch.randn(c, device=device, dtype=case.dtype),
        pe=torch.randn(1, 32, c, device=device, dtype=case.dtype),
    )


KERNELS = {
    "attention": KernelSpec(4, {
        "eager": _attention(eager_attention), "sdpa": _attention(sdpa_attention),
        "triton": _attention(cross_view_attention),
    }),
    "group_norm_to_tokens": KernelSpec(2, {
        "eager": lambda x: group_norm_to_tokens_ref(x["canvas"], GRID, NORM_GROUPS, x["weight"], x["bias"], 1e-6,
                                                    upcast=False),
        "triton": lambda x: group_norm_to_tokens(x["canvas"], GRID, NORM_GROUPS, x["weight"], x["bias"], 1e-6),
    }),
    "layer_norm_view_pe": KernelSpec(2, {
        "eager": lambda x: layer_norm_view_pe_ref(x["tokens"], x["weight"], x["bias"], 1e-5, x["pe"], upcast=False),
        "triton": lambda x: layer_norm_view_pe(x["tokens"], x["weight"], x["bias"], 1e-5, x["pe"]),
    }),
    "tokens_to_canvas": KernelSpec(3, {
        "eager": lambda x: tokens_to_canvas_ref(x["tokens"], x["canvas"], GRID, upcast=False),
        "triton": lambda x: tokens_to_canvas(x["tokens"], x["canvas"], GRID),
    }),
}


def cases(kernels=tuple(KERNELS), canvases=CANVASES, levels=LEVELS,
          dtype=torch.float16) -> list[Case]:
    return [Case(k, canvas, level, dtype) for k in kernels for canvas in canvases for level in levels]


def peak_gbps(device: str) -> float | None:
    """HBM peak of the CUDA device (by name), None on CPU or for an unknown GPU."""
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((gbps for key, gbps in PEAK_GBPS.items() if key in name), None)


def median_ms(fn: Callable[[], object], device: str) -> float:
    """Median milliseconds of one call of ``fn``, with :func:`imagpose.timing.time_runs`.

    A kernel call lasts microseconds, about what one device synchronisation costs, so a timed run repeats the call
    back to back (as often as one warm call's time fits in ``MIN_RUN_SECONDS``) and synchronises once.
    """
    once = time_runs(fn, device, warmup=1, runs=1).median  # the warm-up call compiles Triton kernels
    calls = max(1, math.ceil(MIN_RUN_SECONDS / max(once, 1e-7)))

    def repeated() -> None:
        for _ in range(calls):
            fn()

    return time_runs(repeated, device, warmup=0, runs=RUNS).median / calls * 1e3


def input_copies(case: Case, device: str) -> int:
    """Input sets a case cycles through: on CUDA enough to overflow the L2 cache twice (each call then reads its
    inputs from HBM, like ``triton.testing.do_bench`` after its cache flush, without timing a flush)."""
    if not device.startswith("cuda"):
        return 1
    l2_bytes = torch.cuda.get_device_properties(torch.device(device)).L2_cache_size
    return min(MAX_INPUT_COPIES, max(1, math.ceil(2 * l2_bytes / case.bytes_moved)))


def run_kernel_benchmark(device: str | torch.device, kernels=tuple(KERNELS), canvases=CANVASES,
                         levels=LEVELS, dtype: torch.dtype | None = None) -> list[dict]:
    """Time every (case, provider) on ``device``; one dict per measurement (see the module docstring).

    ``dtype`` defaults to fp16 on CUDA and fp32 on CPU. On CPU the triton provider is left out (``note``).
    """
    device = str(torch.device(device))
    on_cuda = device.startswith("cuda")
    dtype = dtype or (torch.float16 if on_cuda else torch.float32)
    peak = peak_gbps(device)
    rows = []
    for case in cases(kernels, canvases, levels, dtype):
        spec = KERNELS[case.kernel]
        make_inputs = _attention_inputs if case.kernel == "attention" else _canvas_inputs
        input_sets = [make_inputs(case, device) for _ in range(input_copies(case, device))]
        for provider, fn in spec.providers.items():
            if provider == "triton" and not on_cuda:
                continue
            rotation = itertools.cycle(input_sets)
            ms = median_ms(lambda fn=fn, rotation=rotation: fn(next(rotation)), device)
            floor_ms = case.bytes_moved / ((peak or H100_PEAK_GBPS) * 1e9) * 1e3
            rows.append(dict(
                kernel=case.kernel, canvas=f"{case.canvas[0]}x{case.canvas[1]}", level=case.level,
                channels=case.channels, views=case.views, heads=HEADS, head_dim=case.channels // HEADS,
                positions=case.positions, dtype=str(dtype).removeprefix("torch."), device=device,
                device_name=torch.cuda.get_device_name(torch.device(device)) if on_cuda else "cpu",
                provider=provider, median_ms=ms, bytes=case.bytes_moved, gbps=case.bytes_moved / ms / 1e6,
                floor_ms=floor_ms, floor_peak_gbps=peak or H100_PEAK_GBPS,
                floor_ratio=floor_ms / ms if peak else None, note="" if on_cuda else CPU_NOTE,
            ))
    return rows


def format_table(rows: list[dict]) -> str:
    header = (f"{'kernel':<21} {'canvas':>9} {'lvl':>3} {'C':>5} {'N':>6} {'provider':>8} {'median ms':>10} "
              f"{'GB/s':>8} {'floor us':>9} {'floor/t':>7}")
    lines = [header, "-" * len(header)]
    for r in rows:
        ratio = f"{r['floor_ratio']:7.2f}" if r["floor_ratio"] is not None else f"{'-':>7}"
        lines.append(f"{r['kernel']:<21} {r['canvas']:>9} {r['level']:>3} {r['channels']:>5} {r['positions']:>6} "
                     f"{r['provider']:>8} {r['median_ms']:10.4f} {r['gbps']:8.1f} {r['floor_ms'] * 1e3:9.1f} {ratio}")
    if rows:
        lines.append(f"floor = bytes / {rows[0]['floor_peak_gbps']:.0f} GB/s; floor/t = fraction of the HBM roofline")
        if rows[0]["note"]:
            lines.append(rows[0]["note"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--canvas", action="append", help="canvas HxW in pixels (repeatable; default: both)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"],
                        help="default: float16 on CUDA, float32 on CPU")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--kernels", nargs="+", choices=list(KERNELS), default=list(KERNELS), help="kernels to run")
    args = parser.parse_args(argv)
    canvases = [tuple(int(s) for s in c.lower().split("x")) for c in args.canvas] if args.canvas else CANVASES
    rows = run_kernel_benchmark(args.device, args.kernels, canvases,
                                dtype=getattr(torch, args.dtype) if args.dtype else None)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
