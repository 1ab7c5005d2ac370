"""Output parity of every backend against the fp32 PyTorch reference.

Per component: the same inputs (the contract's sample inputs at one shape bucket) through the reference and
the backend; max |diff| and SQNR in dB (``20 log10(|ref| / |ref - test|)``, scale-free, torchao's
``compute_error``). End to end: the same requests and seeds through the whole pipeline; SSIM (torchmetrics,
Gaussian window 11, sigma 1.5, data range 1, mean over the windows inside the image) and PSNR (torchmetrics,
data range 1) of the final canvases (the worst request), max |diff| of the final latents.

Tolerances (stated, and relative to what PyTorch itself achieves in the backend's precision):
    fp32 backends   every component SQNR >= 60 dB; final images SSIM >= 0.999
    fp16 backends   every component's error <= 2x PyTorch fp16's own error against fp32 (SQNR >= torch fp16
                    SQNR - 6 dB); final images SSIM >= min(0.98, torch fp16's SSIM - 0.01)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from imagpose.errors import IMAGPoseError, InvalidArgumentError
from imagpose.runtime import RuntimeWrapper

from .components import COMPONENTS, CONTRACTS, ShapeBucket, axis_values, call_runtime, model_config

FP32_MIN_SQNR_DB = 60.0
FP32_MIN_SSIM = 0.999


def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    """torchao's ``compute_error``, hand-written: torchao is not a dependency and no library we use has SQNR."""
    reference, test = reference.double().flatten(), test.double().flatten()
    noise = torch.linalg.vector_norm(reference - test)
    if noise == 0:
        return math.inf
    return float(20 * torch.log10(torch.linalg.vector_norm(reference) / noise))


def psnr(reference: torch.Tensor, test: torch.Tensor, data_range: float = 1.0) -> float:
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(test.double(), reference.double(), data_range=data_range))


def ssim(reference: torch.Tensor, test: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03) over (B, C, H, W).

    torchmetrics reflect-pads the images and averages over every pixel; the mean here is over the windows that
    lie inside the image (Wang et al., scikit-image), so the 5-pixel border of its SSIM map is cropped.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    x, y = reference.double(), test.double()
    if x.dim() == 3:
        x, y = x[None], y[None]
    _, ssim_map = structural_similarity_index_measure(y, x, gaussian_kernel=True, sigma=1.5, kernel_size=11,
                                                      data_range=data_range, k1=0.01, k2=0.03,
                                                      return_full_image=True)
    return float(ssim_map[..., 5:-5, 5:-5].mean())


@dataclass
class ComponentParity:
    backend: str
    component: str
    max_abs: float
    sqnr_db: float
    min_sqnr_db: float

    @property
    def passed(self) -> bool:
        return self.sqnr_db >= self.min_sqnr_db


@dataclass
class EndToEndParity:
    backend: str
    ssim: float
    psnr_db: float
    latents_max_abs: float
    min_ssim: float

    @property
    def passed(self) -> bool:
        return self.ssim >= self.min_ssim


@dataclass
class ParityReport:
    device: str
    components: list[ComponentParity] = field(default_factory=list)
    end_to_end: list[EndToEndParity] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.components) and all(e.passed for e in self.end_to_end)

    def format(self) -> str:
        lines = [f"Parity vs the fp32 PyTorch reference on {self.device}", "",
                 f"{'backend':<14}{'component':<16}{'max abs':>12}{'SQNR dB':>10}{'min dB':>9}  result"]
        for c in self.components:
            lines.append(f"{c.backend:<14}{c.component:<16}{c.max_abs:>12.3e}{c.sqnr_db:>10.1f}{c.min_sqnr_db:>9.1f}  "
                         f"{'PASS' if c.passed else 'FAIL'}")
        lines += ["", f"{'backend':<14}{'SSIM':>10}{'min SSIM':>10}{'PSNR dB':>10}{'latents max abs':>18}  result"]
        for e in self.end_to_end:
            lines.append(f"{e.backend:<14}{e.ssim:>10.6f}{e.min_ssim:>10.4f}{e.psnr_db:>10.1f}"
                         f"{e.latents_max_abs:>18.3e}  {'PASS' if e.passed else 'FAIL'}")
        lines += ["", "PASS" if self.passed else "FAIL"]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready: strict JSON has no inf/NaN, so non-finite numbers (identical outputs give an infinite
        SQNR, an unjudged yardstick a -inf minimum) are written as the strings "inf", "-inf", "nan"."""
        def finite(row: dict) -> dict:
            return {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}

        return {"device": self.device, "passed": self.passed,
                "components": [finite({**asdict(c), "passed": c.passed}) for c in self.components],
                "end_to_end": [finite({**asdict(e), "passed": e.passed}) for e in self.end_to_end]}


@torch.no_grad()
def component_parity(pipe, name: str, backend, bucket: ShapeBucket, min_sqnr_db: float = FP32_MIN_SQNR_DB,
                     components=COMPONENTS, seed: int = 0) -> list[ComponentParity]:
    reference = pipe.torch_runtime()
    config, grid = model_config(pipe), (bucket.rows, bucket.cols)
    out = []
    for component in components:
        shape_bucket = bucket if component == "unet" else replace(bucket, cfg=False)
        inputs = CONTRACTS[component].sample_inputs(axis_values(shape_bucket, config), device=pipe.device,
                                                    seed=seed)
        ref = call_runtime(reference, component, inputs, grid).float().cpu()
        test = call_runtime(backend, component, inputs, grid).float().cpu()
        out.append(ComponentParity(name, component, float((ref - test).abs().max()), sqnr_db(ref, test),
                                   min_sqnr_db))
    return out


@torch.no_grad()
def end_to_end_parity(pipe, name: str, backend, requests, steps: int = 3, min_ssim: float = FP32_MIN_SSIM
                      ) -> EndToEndParity:
    kwargs = dict(num_inference_steps=steps, output_type="pt", progress=False)
    reference = pipe(requests, runtime=pipe.torch_runtime(), **kwargs).results
    test = pipe(requests, runtime=backend, **kwargs).results
    pairs = [(a.canvas[None], b.canvas[None]) for a, b in zip(reference, test)]
    latents = max(float((a.latents - b.latents).abs().max()) for a, b in zip(reference, test))
    # the worst request decides: min SSIM and min PSNR over the requests
    return EndToEndParity(name, min(ssim(a, b) for a, b in pairs), min(psnr(a, b) for a, b in pairs), latents,
                          min_ssim)


def run_parity(pipe, backends: dict, bucket: ShapeBucket, requests, steps: int = 3,
               lowp_reference=None, lowp_backends: tuple[str, ...] = ()) -> ParityReport:
    """Component and end-to-end parity of every backend in ``backends`` ({name: runtime}).

    Backends named in ``lowp_backends`` (fp16 engines) are held to PyTorch's own low-precision error:
    ``lowp_reference`` is the same model in fp16 (a Runtime), measured against the fp32 reference first.
    """
    report = ParityReport(device=str(pipe.device))
    lowp_components, lowp_e2e = {}, None
    if lowp_backends:
        if lowp_reference is None:
            raise InvalidArgumentError("fp16 backends need lowp_reference (the PyTorch model in fp16) to set "
                                       "their tolerances.")
        lowp_components = {c.component: c for c in component_parity(pipe, "torch-fp16", lowp_reference, bucket)}
        lowp_e2e = end_to_end_parity(pipe, "torch-fp16", lowp_reference, requests, steps)
        report.components += list(lowp_components.values())
        report.end_to_end.append(replace(lowp_e2e, min_ssim=0.0))
        for c in lowp_components.values():
            c.min_sqnr_db = -math.inf  # the yardstick itself is reported, not judged
    for name, backend in backends.items():
        if name in lowp_backends:
            parts = component_parity(pipe, name, backend, bucket)
            for part in parts:
                part.min_sqnr_db = lowp_components[part.component].sqnr_db - 6.0  # error <= 2x torch fp16's
            report.components += parts
            report.end_to_end.append(end_to_end_parity(pipe, name, backend, requests, steps,
                                                       min(0.98, lowp_e2e.ssim - 0.01)))
        else:
            report.components += component_parity(pipe, name, backend, bucket)
            report.end_to_end.append(end_to_end_parity(pipe, name, backend, requests, steps))
    return report


class CastRuntime(RuntimeWrapper):
    """Runs a runtime in another precision: floating inputs cast to ``dtype``, outputs back to float32.

    ``CastRuntime(pipe_fp16.torch_runtime(), torch.float16)`` is PyTorch's own fp16 error yardstick.
    """

    def __init__(self, runtime, dtype: torch.dtype, name: str = "torch-fp16"):
        super().__init__(runtime, name)
        self.dtype = dtype

    def call(self, method: str, *args):
        args = [a.to(self.dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        if method.startswith("unet"):
            args[1] = args[1].float()  # timesteps stay fp32, as in the exported graphs
        output = super().call(method, *args)
        return tuple(o.float() for o in output) if isinstance(output, tuple) else output.float()


@torch.no_grad()
def trajectory_parity(pipe, name: str, backend, request, steps: int = 10) -> dict:
    """SQNR of the UNet prediction at every denoising step, and SSIM/PSNR of the final image, vs fp32 torch.

    Both runs start from the same noise; the backend's run follows its own trajectory, so per-step SQNR
    shows how the error grows along the chain.
    """
    def trace(runtime):
        predictions = []
        result = pipe(request, num_inference_steps=steps, output_type="pt", progress=False, runtime=runtime,
                      callback_on_step_end=lambda p, i, t, kw: predictions.append(kw["prediction"].float().cpu()))
        return predictions, result.results[0]

    ref_steps, ref = trace(pipe.torch_runtime())
    test_steps, test = trace(backend)
    return {"backend": name, "steps": steps,
            "sqnr_db_per_step": [round(sqnr_db(a, b), 1) for a, b in zip(ref_steps, test_steps)],
            "final_ssim": ssim(ref.canvas[None], test.canvas[None]),
            "final_psnr_db": psnr(ref.canvas[None], test.canvas[None])}


class CVABackendRuntime(RuntimeWrapper):
    """The pipeline's torch runtime with its CVA modules switched to another attention backend per UNet call."""

    def __init__(self, pipe, cva_backend: str):
        super().__init__(pipe.torch_runtime(), f"torch+{cva_backend}-cva")
        self.pipe, self.cva_backend = pipe, cva_backend

    def call(self, method: str, *args):
        if not method.startswith("unet"):
            return super().call(method, *args)
        self.pipe.unet.set_cva_backend(self.cva_backend)
        try:
            return super().call(method, *args)
        finally:
            self.pipe.unet.set_cva_backend("eager")


def fast_path_parity(backends, device: str, work_dir: str | Path, steps: int = 10, pipe=None,
                     tile_size: tuple[int, int] = (64, 64)) -> dict:
    """Per-step SQNR and final SSIM/PSNR of each fast path vs fp32 torch (T2, one request at ``tile_size`` tiles) on
    ``pipe`` (default: the tiny random-weight preset).

    ``backends``: any of "onnxruntime", "tensorrt" (an fp16 engine) and "triton-cva" (the fused Triton CVA
    kernels); other names ("eager", "torch": the reference itself) are skipped. Exported files and engines go under
    ``work_dir`` (see :func:`imagpose.export.runtime.prepare_runtime`). A fast path that cannot run here
    (missing dependency, no GPU) is reported in its row instead of stopping the others.
    """
    from imagpose import scenarios
    from imagpose.presets import build_pipeline
    from imagpose.samples import sample

    from .runtime import prepare_runtime

    pipe = pipe if pipe is not None else build_pipeline("tiny", device=device)
    request = scenarios.t2(*sample("person_red_front"), sample("person_red_walking")[1], tile_size=tile_size,
                           seed=0)
    bucket = ShapeBucket(1, *pipe.request_layout(request).padded_tile, 2, 2)
    rows = []
    for backend in backends:
        try:
            if backend == "onnxruntime":
                runtime = prepare_runtime("onnxruntime", pipe, work_dir, bucket)
            elif backend == "tensorrt":
                runtime = prepare_runtime("tensorrt", pipe, work_dir, bucket, dtype="fp16")
            elif backend == "triton-cva":
                runtime = CVABackendRuntime(pipe, "triton")
            else:
                continue
            rows.append(trajectory_parity(pipe, backend, runtime, request, steps=steps))
        except IMAGPoseError as exc:
            rows.append({"backend": backend, "error": f"{type(exc).__name__}: {exc}"})
    return {"rows": rows, "text": "\n".join(json.dumps(row) for row in rows)}
