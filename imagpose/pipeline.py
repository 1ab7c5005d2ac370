"""IMAGPosePipeline: pose-guided person generation over a joint canvas (diffusers ``DiffusionPipeline``).

    from imagpose import IMAGPosePipeline, scenarios
    pipe = IMAGPosePipeline.from_pretrained("path/to/imagpose")          # or imagpose.presets.build_pipeline
    request = scenarios.t2("person.png", "person_pose.png", "target_pose.png", seed=0)
    result = pipe(request).results[0]
    result.targets[0].save("out.png")

Defaults follow the paper: DDIM, 20 steps, guidance 2.0 (the official script uses 30 steps).
Several requests in one call are batched (requests with the same canvas geometry share UNet calls).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from PIL import Image
from tqdm.auto import tqdm

from .canvas import JointCanvas, PoseRequest, build_canvas
from .conditions import Conditions, encode_conditions
from .images import tensor_to_pil
from .runtime import Runtime, TorchRuntime
from .sampling_settings import check_sampling_settings

OUTPUT_TYPES = ("pil", "pt", "latent")


@dataclass
class GenerationResult:
    """The outcome of one request.

    Attributes:
        targets: one image per target view, in tile order (PIL, or (3, H, W) tensors in [0, 1] for "pt";
            empty for "latent").
        target_indices: the tile index of each target.
        canvas: the decoded joint canvas (padding removed), PIL or (3, Hc, Wc) tensor; None for "latent".
        latents: final latents (4, h, w) of the (padded) canvas.
        seed: the initial-noise seed; ``generator.initial_seed()`` when a generator was passed.
        name: the request's name.
    """

    targets: list
    target_indices: list[int]
    canvas: Image.Image | torch.Tensor | None
    latents: torch.Tensor
    seed: int
    name: str | None = None


@dataclass
class IMAGPosePipelineOutput(BaseOutput):
    results: list[GenerationResult] = field(default_factory=list)

    @property
    def images(self) -> list:
        """Every target image of every request, flattened in request order."""
        return [image for result in self.results for image in result.targets]


class IMAGPosePipeline(DiffusionPipeline):
    r"""IMAGPose (NeurIPS 2024) inference.

    Components: ``unet`` (:class:`~imagpose.models.IMAGPoseUNet`), ``vae`` (``AutoencoderKL``), ``image_encoder``
    (:class:`~imagpose.models.IMAGPoseImageEncoder`, DINOv2), ``flc_tokenizer``
    (:class:`~imagpose.models.FLCTokenizer`), ``pose_guider`` (:class:`~imagpose.models.PoseGuider`),
    ``scheduler`` (``DDIMScheduler`` as :func:`imagpose.schedulers.official_ddim_scheduler`).
    """

    model_cpu_offload_seq = "image_encoder->flc_tokenizer->pose_guider->unet->vae"

    def __init__(self, unet, vae, image_encoder, flc_tokenizer, pose_guider, scheduler):
        super().__init__()
        self.register_modules(unet=unet, vae=vae, image_encoder=image_encoder, flc_tokenizer=flc_tokenizer,
                              pose_guider=pose_guider, scheduler=scheduler)
        self.backend: Runtime | None = None  # None: the reference TorchRuntime over the modules above

    def set_backend(self, backend: Runtime | None) -> None:
        """Run the networks on another runtime (``imagpose.export.runtime``); None returns to PyTorch."""
        self.backend = backend

    def runtime(self, backend: Runtime | None = None) -> Runtime:
        """``backend``, else ``self.backend``, else the PyTorch reference."""
        return backend or self.backend or self.torch_runtime()

    def torch_runtime(self) -> TorchRuntime:
        """The PyTorch reference runtime over this pipeline's modules."""
        return TorchRuntime(self.unet, self.vae, self.image_encoder, self.flc_tokenizer, self.pose_guider)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path, torch_dtype: torch.dtype | None = None, **kwargs) -> IMAGPosePipeline:
        """Load a pipeline folder written by ``save_pretrained`` (or ``imagpose convert``). Local folders only.

        Every file is checked before a loader reads it: a missing, unparsable or truncated file raises an
        ``InputFileError`` that names it (a missing one also is a ``FileNotFoundError``).
        """
        from pathlib import Path

        from diffusers import AutoencoderKL, DDIMScheduler

        from .errors import InputFileError
        from .io import MissingInputFileError, check_model_folder, read_json_file
        from .models import FLCTokenizer, IMAGPoseImageEncoder, IMAGPoseUNet, PoseGuider

        if kwargs:
            raise TypeError(f"Unsupported from_pretrained arguments: {sorted(kwargs)}.")
        path = Path(path)
        if not (path / "model_index.json").is_file():
            raise MissingInputFileError(
                f"{path} is not an imagpose pipeline folder ({path / 'model_index.json'} is missing). Create one "
                "with `imagpose convert` or IMAGPosePipeline.save_pretrained().")
        fix = "save the pipeline again (IMAGPosePipeline.save_pretrained() or `imagpose convert`)"
        index = read_json_file(path / "model_index.json", fix)
        diffusers_weights = "diffusion_pytorch_model.safetensors"
        components = {  # name: (loader, config file, weights file)
            "unet": (IMAGPoseUNet, "config.json", diffusers_weights),
            "vae": (AutoencoderKL, "config.json", diffusers_weights),
            "image_encoder": (IMAGPoseImageEncoder, "config.json", "model.safetensors"),
            "flc_tokenizer": (FLCTokenizer, "config.json", diffusers_weights),
            "pose_guider": (PoseGuider, "config.json", diffusers_weights),
            "scheduler": (DDIMScheduler, "scheduler_config.json", None),
        }
        for name, (_, config_name, weights_name) in components.items():
            if name not in index:
                raise InputFileError(f"{path / 'model_index.json'} lists no {name!r} component; {fix}.")
            check_model_folder(path / name, config_name, weights_name, fix)
        dtype = torch_dtype or torch.float32
        loaded = {}
        for name, (loader, _, _) in components.items():
            try:
                if name == "scheduler":
                    loaded[name] = loader.from_pretrained(path / name)
                elif name == "image_encoder":
                    loaded[name] = loader.from_pretrained(path / name, dtype=dtype).eval()
                else:
                    loaded[name] = loader.from_pretrained(path / name, torch_dtype=dtype).eval()
            except OSError as exc:  # diffusers and transformers report files they cannot use as OSError
                raise InputFileError(f"{path / name} cannot be loaded ({exc}); {fix}.") from exc
        return cls(**loaded)

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """diffusers ``save_pretrained`` into ``save_directory``, beside what is already there: staged inside it
        and moved into place file by file at the end (see :class:`imagpose.io.OutputFolder`)."""
        from .io import OutputFolder

        with OutputFolder(save_directory) as out:
            super().save_pretrained(out.path(), **kwargs)

    # ------------------------------------------------------------------ geometry
    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def pad_multiple(self) -> int:
        """Tile sides are padded to multiples of this (64 for SD1.5) so every UNet level splits evenly."""
        return self.vae_scale_factor * self.unet.tile_multiple

    def build_canvas(self, request: PoseRequest) -> JointCanvas:
        return build_canvas(request, self.pad_multiple, self.vae_scale_factor)

    # ------------------------------------------------------------------ steps
    def check_inputs(self, requests, num_inference_steps, guidance_scale, eta, output_type, generator):
        if isinstance(requests, PoseRequest):
            requests = [requests]
        if not requests or not all(isinstance(r, PoseRequest) for r in requests):
            raise TypeError("requests must be a PoseRequest or a non-empty list of them (see imagpose.scenarios).")
        check_sampling_settings(num_inference_steps, guidance_scale, eta, self.scheduler.config.num_train_timesteps)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        if isinstance(generator, list) and len(generator) != len(requests):
            raise ValueError(f"Got {len(generator)} generators for {len(requests)} requests; pass one per request.")
        for r in requests:
            if r.grid[0] * r.grid[1] > self.unet.config.cva_max_views:
                raise ValueError(f"A {r.grid[0]}x{r.grid[1]} grid exceeds the CVA's "
                                 f"{self.unet.config.cva_max_views} view positions.")
        return list(requests)

    @staticmethod
    def resolve_generators(requests: list[PoseRequest], generator) -> tuple[list[torch.Generator], list[int]]:
        """One CPU generator per request, so a request's noise does not depend on what it is batched with."""
        if generator is None:
            seeds = [r.seed if r.seed is not None else random.SystemRandom().randrange(2**63) for r in requests]
            return [torch.Generator("cpu").manual_seed(s) for s in seeds], seeds
        generators = generator if isinstance(generator, list) else [generator] * len(requests)
        return generators, [g.initial_seed() for g in generators]

    def prepare_latents(self, generators, latent_size, dtype) -> torch.Tensor:
        """x_T ~ N(0, I) drawn per request: (B, 4, h, w), times the scheduler's init sigma."""
        noise = [torch.randn((1, 4, *latent_size), generator=g, dtype=torch.float32) for g in generators]
        return torch.cat(noise).to(self.device, dtype) * self.scheduler.init_noise_sigma

    def denoise(self, runtime: Runtime, latents, conditions: Conditions, timesteps, guidance_scale, grid, eta,
                generators, callback_on_step_end=None, progress: bool = True) -> torch.Tensor:
        do_cfg = guidance_scale > 1.0  # the official rule: w <= 1 runs the conditional branch only
        context, image_condition, pose_features = (
            conditions.for_guidance() if do_cfg else conditions.without_guidance())
        step_generator = generators if len(generators) > 1 else generators[0]
        with tqdm(total=len(timesteps), desc="denoising", unit="step", disable=not progress, leave=False) as bar:
            for i, t in enumerate(timesteps):
                # 6.1 model input: [x_t, flag, masked latent], duplicated for CFG as [uncond, cond]
                model_input = torch.cat([latents] * 2) if do_cfg else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                model_input = torch.cat([model_input, image_condition], dim=1)
                # 6.2 predict (v-prediction in the official model)
                timestep = t.reshape(1).to(self.device)  # one timestep for every row
                prediction = runtime.unet(model_input, timestep, context, pose_features, grid)
                # 6.3 guidance: u + w (c - u)
                if do_cfg:
                    uncond, cond = prediction.chunk(2)
                    prediction = uncond + guidance_scale * (cond - uncond)
                # 6.4 x_t -> x_{t-1}
                latents = self.scheduler.step(prediction, t, latents, eta=eta, generator=step_generator,
                                              return_dict=False)[0]
                if callback_on_step_end is not None:
                    update = callback_on_step_end(self, i, t, {"latents": latents, "prediction": prediction})
                    latents = (update or {}).get("latents", latents)
                bar.update()
        return latents

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        requests: PoseRequest | list[PoseRequest],
        num_inference_steps: int = 20,
        guidance_scale: float = 2.0,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        progress: bool = True,
        backend: Runtime | None = None,
    ) -> IMAGPosePipelineOutput | list[GenerationResult]:
        r"""Generate the target views of one or more requests.

        Args:
            requests: a :class:`~imagpose.canvas.PoseRequest` or a list (see :mod:`imagpose.scenarios`).
            num_inference_steps: DDIM steps (paper 20; official script 30).
            guidance_scale: w in ``u + w (c - u)``; <= 1 disables classifier-free guidance.
            eta: DDIM eta (0 = deterministic).
            generator: a CPU generator (or one per request) overriding the requests' seeds.
            output_type: "pil", "pt" ((3, H, W) float tensors in [0, 1]) or "latent" (no decoding).
            callback_on_step_end: ``fn(pipe, step, t, {"latents", "prediction"}) -> dict | None``; a returned
                ``"latents"`` replaces the latents.
            progress: show a progress bar.
            backend: a :class:`~imagpose.runtime.Runtime` (ONNX Runtime, TensorRT, ...) for this call; default
                ``pipe.backend`` or PyTorch.
        """
        # 1. check inputs
        requests = self.check_inputs(requests, num_inference_steps, guidance_scale, eta, output_type, generator)
        generators, seeds = self.resolve_generators(requests, generator)
        runtime = self.runtime(backend)

        # 2. build canvases; requests with the same geometry are batched together
        canvases = [self.build_canvas(r) for r in requests]
        groups: dict = {}
        for index, canvas in enumerate(canvases):
            groups.setdefault(canvas.layout, []).append(index)

        results: list[GenerationResult | None] = [None] * len(requests)
        for layout, members in groups.items():
            group = [canvases[i] for i in members]
            # 3. encode conditions once per request (DINOv2 + FLC tokens, masked latent, flag, pose features)
            conditions = encode_conditions(group, runtime, self.device, self.unet.dtype)
            # 4. timesteps
            self.scheduler.set_timesteps(num_inference_steps, device=self.device)
            # 5. initial latents, one generator per request
            latents = self.prepare_latents([generators[i] for i in members], layout.latent_size,
                                           conditions.context.dtype)
            # 6. denoising loop
            latents = self.denoise(runtime, latents, conditions, self.scheduler.timesteps, guidance_scale,
                                   (layout.rows, layout.cols), eta, [generators[i] for i in members],
                                   callback_on_step_end, progress)
            # 7. decode the canvas and 8. crop the target tiles (padding removed)
            images = None
            if output_type != "latent":  # one request at a time, as the encoders (see encode_conditions)
                images = torch.cat([runtime.vae_decode(latents[row:row + 1]) for row in range(len(members))])
            for row, index in enumerate(members):
                results[index] = self._result(requests[index], canvases[index],
                                              images[row] if images is not None else None,
                                              latents[row], seeds[index], output_type)

        self.maybe_free_model_hooks()
        output = IMAGPosePipelineOutput(results=results)
        return output if return_dict else output.results

    @staticmethod
    def _result(request, canvas: JointCanvas, image, latents, seed, output_type) -> GenerationResult:
        layout = canvas.layout
        targets, full = [], None
        if image is not None:
            tiles = [layout.crop(image, i) for i in range(layout.num_views)]
            rows = [torch.cat(tiles[r * layout.cols:(r + 1) * layout.cols], dim=-1) for r in range(layout.rows)]
            full = torch.cat(rows, dim=-2)
            targets = [tiles[i].float().cpu() for i in canvas.target_indices]
            full = full.float().cpu()
            if output_type == "pil":
                targets = tensor_to_pil(torch.stack(targets))
                full = tensor_to_pil(full[None])[0]
        return GenerationResult(targets=targets, target_indices=canvas.target_indices, canvas=full,
                                latents=latents.float().cpu(), seed=seed, name=request.name)
