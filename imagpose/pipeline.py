"""IMAGPosePipeline: pose-guided person generation over a joint canvas (diffusers ``DiffusionPipeline``).

    from imagpose import IMAGPosePipeline, scenarios
    pipe = IMAGPosePipeline.from_pretrained("path/to/imagpose")          # or imagpose.presets.build_pipeline
    request = scenarios.t2("person.png", "person_pose.png", "target_pose.png", seed=0)
    result = pipe(request).results[0]
    result.targets[0].save("out.png")
    fast = pipe(request, sampler="unipc", num_inference_steps=8)            # or sampling=SamplingConfig(...)

Defaults follow the paper (:class:`~imagpose.sampling_config.SamplingConfig`): DDIM, 20 steps, guidance 2.0 (the
official script uses 30 steps); a distilled few-step student (``imagpose train distill``) records its own in its
folder (``sampling.json``: the lcm sampler, 4 steps, no guidance), and calls that give none use them. Assigning a
supported diffusers scheduler selects its sampler, as in diffusers:
``pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)``.
Several requests in one call are batched (requests with the same canvas geometry share UNet calls).
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from tqdm.auto import tqdm

from .autoencoders import downscale_factor
from .canvas import (
    GridLayout,
    JointCanvas,
    PoseRequest,
    build_canvas,
    check_layout,
    pad_multiple_for,
    validate_request,
)
from .conditions import Conditions, encode_conditions
from .deepcache import DeepCache, check_deepcache_runtime
from .errors import InvalidArgumentError
from .guidance import guided_steps
from .images import tensor_to_pil
from .memory import (
    MemoryEstimate,
    check_memory,
    check_memory_limit,
    estimate_call_memory,
    request_layout,
    resolve_memory_limit,
    weight_bytes,
)
from .runtime import Runtime, TorchRuntime
from .samplers import make_sampler, sampler_of, step_arguments
from .sampling_config import SamplingConfig

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

    Components: ``unet`` (:class:`~imagpose.models.IMAGPoseUNet`), ``vae`` (``AutoencoderKL`` or the TAESD-style
    ``AutoencoderTiny``, see :mod:`imagpose.autoencoders`), ``image_encoder``
    (:class:`~imagpose.models.IMAGPoseImageEncoder`, DINOv2), ``flc_tokenizer``
    (:class:`~imagpose.models.FLCTokenizer`), ``pose_guider`` (:class:`~imagpose.models.PoseGuider`),
    ``scheduler`` (:class:`~imagpose.schedulers.IMAGPoseDDIMScheduler`, diffusers' DDIM configured as
    :func:`imagpose.schedulers.official_ddim_scheduler`). The scheduler holds the noise schedule and selects the
    sampler of calls that name none: assigning another supported one (:func:`imagpose.samplers.sampler_of`)
    switches to its sampler, any other is refused.
    """

    model_cpu_offload_seq = "image_encoder->flc_tokenizer->pose_guider->unet->vae"

    def __init__(self, unet, vae, image_encoder, flc_tokenizer, pose_guider, scheduler):
        super().__init__()
        self.register_modules(unet=unet, vae=vae, image_encoder=image_encoder, flc_tokenizer=flc_tokenizer,
                              pose_guider=pose_guider, scheduler=scheduler)
        self.default_runtime: Runtime | None = None  # None: the reference TorchRuntime over the modules above
        # the sampling of calls that give none: the paper's, or what the folder's sampling.json records (a distilled
        # few-step student: its sampler and steps, no guidance); ``distillation``: how such a student was made
        self.default_sampling = SamplingConfig()
        self.distillation: dict | None = None
        self.memory_limit_bytes: int | None = None  # None: the default limit (see set_memory_limit)

    def __setattr__(self, name, value):
        if name == "scheduler":
            sampler_of(value)  # refuses a scheduler the pipeline cannot sample with, naming those it can
        super().__setattr__(name, value)

    @property
    def sampler(self) -> str:
        """The sampler of ``self.scheduler`` (``"ddim"`` unless another supported scheduler was assigned)."""
        return sampler_of(self.scheduler)

    def sampling_config(self, sampling: SamplingConfig | None = None, **call_arguments) -> SamplingConfig:
        """The sampling of a call, checked against this pipeline's models: ``sampling`` (default:
        :attr:`default_sampling` with :attr:`sampler`) with the call's keyword arguments that were given
        (``num_inference_steps=``, ``deepcache_interval=``, ..., see :meth:`SamplingConfig.with_call_arguments`)."""
        if sampling is None:
            sampling = self.default_sampling.replace(sampler=self.sampler)
        elif not isinstance(sampling, SamplingConfig):
            raise InvalidArgumentError(f"sampling must be an imagpose.SamplingConfig, got {type(sampling).__name__}.")
        return sampling.with_call_arguments(**call_arguments).check_pipeline(self)

    def set_runtime(self, runtime: Runtime | None) -> None:
        """Run the networks on another runtime by default (``imagpose.export.runtime``); None returns to PyTorch."""
        self.default_runtime = runtime

    def resolve_runtime(self, runtime: Runtime | None = None) -> Runtime:
        """The runtime of a call: ``runtime``, else the one of :meth:`set_runtime`, else the PyTorch reference."""
        return runtime or self.default_runtime or self.torch_runtime()

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

        from .autoencoders import load_autoencoder
        from .errors import InputFileError
        from .io import MissingInputFileError, check_model_folder, read_json_file
        from .models import FLCTokenizer, IMAGPoseImageEncoder, IMAGPoseUNet, PoseGuider
        from .samplers import load_scheduler
        from .sampling_config import read_sampling_file

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
            "vae": (load_autoencoder, "config.json", diffusers_weights),  # the class its config names
            "image_encoder": (IMAGPoseImageEncoder, "config.json", "model.safetensors"),
            "flc_tokenizer": (FLCTokenizer, "config.json", diffusers_weights),
            "pose_guider": (PoseGuider, "config.json", diffusers_weights),
            "scheduler": (load_scheduler, "scheduler_config.json", None),  # the class its config names
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
                    loaded[name] = loader(path / name)
                elif name == "vae":
                    loaded[name] = loader(path / name, dtype)
                elif name == "image_encoder":
                    loaded[name] = loader.from_pretrained(path / name, dtype=dtype).eval()
                else:
                    loaded[name] = loader.from_pretrained(path / name, torch_dtype=dtype).eval()
            except OSError as exc:  # diffusers and transformers report files they cannot use as OSError
                raise InputFileError(f"{path / name} cannot be loaded ({exc}); {fix}.") from exc
        pipe = cls(**loaded)
        pipe.default_sampling, pipe.distillation = read_sampling_file(path)
        return pipe

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """diffusers ``save_pretrained`` into ``save_directory``, beside what is already there: staged inside it
        and moved into place file by file at the end (see :class:`imagpose.io.OutputFolder`). The components'
        ``_name_or_path`` (the folder they were loaded from) is left out, and non-default sampling is recorded in
        ``sampling.json``."""
        from .io import OutputFolder
        from .sampling_config import SAMPLING_FILE, sampling_file_contents

        with OutputFolder(save_directory) as out:
            super().save_pretrained(out.path(), **kwargs)
            for config in out.path().glob("*/config.json"):  # the folder a component was loaded from: this
                data = json.loads(config.read_text(encoding="utf-8"))  # machine's path, meaningless where it travels
                if data.pop("_name_or_path", None) is not None:
                    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            contents = sampling_file_contents(self.default_sampling, self.distillation)
            if contents is not None:
                out.write_json(SAMPLING_FILE, contents)

    # ------------------------------------------------------------------ geometry
    @property
    def vae_scale_factor(self) -> int:
        return downscale_factor(self.vae)

    @property
    def pad_multiple(self) -> int:
        """Tile sides are padded to multiples of this (64 for SD1.5) so every UNet level splits evenly."""
        return pad_multiple_for(self.vae_scale_factor, len(self.unet.config.block_out_channels))

    def build_canvas(self, request: PoseRequest) -> JointCanvas:
        return build_canvas(request, self.pad_multiple, self.vae_scale_factor, self.flc_tokenizer.config.patch_size)

    def check_tile_size(self, tile_size: tuple[int, int], grid: tuple[int, int] = (2, 2)) -> None:
        """Refuse ``tile_size`` (height, width) when a ``grid`` canvas of such tiles is too small for this model;
        the message names the smallest tile that works."""
        check_layout(GridLayout(*grid, *tile_size, self.pad_multiple, self.vae_scale_factor),
                     self.flc_tokenizer.config.patch_size)

    def request_layout(self, request: PoseRequest) -> GridLayout:
        """The canvas geometry of a request without building its canvas (image files: headers only)."""
        return request_layout(request, self.pad_multiple, self.vae_scale_factor)

    # ------------------------------------------------------------------ memory
    def set_memory_limit(self, limit_bytes: int | None) -> None:
        """Refuse calls whose estimated peak memory exceeds ``limit_bytes`` (:class:`MemoryLimitError`).

        None restores the default: ``IMAGPOSE_MAX_MEMORY_GIB`` when set, else the weights plus
        :data:`imagpose.memory.DEFAULT_FRACTION` of the memory still available on the pipeline's device.
        """
        self.memory_limit_bytes = check_memory_limit(limit_bytes)

    def memory_limit(self, device: torch.device | None = None) -> int:
        """The limit every call is checked against, in bytes (see :meth:`set_memory_limit`)."""
        return resolve_memory_limit(self.memory_limit_bytes, device or self._execution_device,
                                    resident_bytes=weight_bytes(self))

    def memory_estimate(self, layouts: list[GridLayout], guidance_scale: float = SamplingConfig.guidance_scale,
                        output_type: str = "pil") -> MemoryEstimate:
        """The estimated peak memory of a call on canvases of these layouts (see :mod:`imagpose.memory`)."""
        return estimate_call_memory(self, layouts, do_cfg=guidance_scale > 1.0, decode=output_type != "latent")

    def check_memory(self, layouts: list[GridLayout], guidance_scale: float = SamplingConfig.guidance_scale,
                     output_type: str = "pil", device: torch.device | None = None) -> None:
        """Raise :class:`~imagpose.errors.MemoryLimitError` when a call on these layouts would exceed the limit."""
        estimate = self.memory_estimate(layouts, guidance_scale, output_type)
        check_memory(estimate, resolve_memory_limit(self.memory_limit_bytes, device or self._execution_device,
                                                    resident_bytes=estimate.weights))

    # ------------------------------------------------------------------ steps
    def check_inputs(self, requests, output_type, generator, canvases=None) -> list[PoseRequest]:
        """The requests as a list; InvalidArgumentError for anything else of the call (its sampling: see
        :meth:`sampling_config`)."""
        if isinstance(requests, PoseRequest):
            requests = [requests]
        if not isinstance(requests, (list, tuple)) or not requests or not all(
                isinstance(r, PoseRequest) for r in requests):
            raise InvalidArgumentError("requests must be a PoseRequest or a non-empty list of them (see "
                                       f"imagpose.scenarios), got {type(requests).__name__}.")
        if output_type not in OUTPUT_TYPES:
            raise InvalidArgumentError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        if isinstance(generator, list) and len(generator) != len(requests):
            raise InvalidArgumentError(f"Got {len(generator)} generators for {len(requests)} requests; pass one "
                                       "per request.")
        if canvases is not None and len(canvases) != len(requests):
            raise InvalidArgumentError(f"Got {len(canvases)} canvases for {len(requests)} requests; pass one per "
                                       "request (pipe.build_canvas).")
        for r in requests:
            validate_request(r)  # seeds and tile sizes before they are used
            if r.grid[0] * r.grid[1] > self.unet.config.cva_max_views:
                raise InvalidArgumentError(f"A {r.grid[0]}x{r.grid[1]} grid exceeds the CVA's "
                                           f"{self.unet.config.cva_max_views} view positions; use a smaller grid.")
        return list(requests)

    @staticmethod
    def resolve_generators(requests: list[PoseRequest], generator) -> tuple[list[torch.Generator], list[int]]:
        """One CPU generator per request, so a request's noise does not depend on what it is batched with."""
        if generator is None:
            seeds = [r.seed if r.seed is not None else random.SystemRandom().randrange(2**63) for r in requests]
            return [torch.Generator("cpu").manual_seed(s) for s in seeds], seeds
        generators = generator if isinstance(generator, list) else [generator] * len(requests)
        return generators, [g.initial_seed() for g in generators]

    def prepare_latents(self, scheduler, generators, latent_size, device, dtype) -> torch.Tensor:
        """x_T ~ N(0, I) with row b drawn from ``generators[b]``: (B, 4, h, w), times the scheduler's init sigma.

        Drawn in float32 and cast, so the noise of a request is the same at every dtype and batch size.
        """
        shape = (len(generators), self.vae.config.latent_channels, *latent_size)
        noise = randn_tensor(shape, generator=list(generators), device=device, dtype=torch.float32)
        return noise.to(dtype) * scheduler.init_noise_sigma

    def denoise(self, runtime: Runtime, scheduler, latents, conditions: Conditions, sampling: SamplingConfig, grid,
                generators, callback_on_step_end=None, progress: bool = True) -> torch.Tensor:
        """The denoising loop over ``scheduler.timesteps`` (DDIM or a multistep solver); ``scheduler`` belongs to this
        call (see ``__call__``).

        A KeyboardInterrupt (Ctrl-C) raised during a step, or by ``callback_on_step_end``, ends the loop there:
        nothing here catches it.
        """
        timesteps = scheduler.timesteps
        guidance_scale = sampling.guidance_scale
        guided = guided_steps(len(timesteps), guidance_scale, sampling.guidance_interval)  # w <= 1: none guided
        branches = {True: conditions.for_guidance() if any(guided) else None, False: conditions.without_guidance()}
        cache = DeepCache(sampling.deepcache) if sampling.deepcache is not None else None
        step_generator = generators if len(generators) > 1 else generators[0]
        with tqdm(total=len(timesteps), desc="denoising", unit="step", disable=not progress, leave=False) as bar:
            for i, t in enumerate(timesteps):
                do_cfg = guided[i]
                context, image_condition, pose_features = branches[do_cfg]
                # 7.1 model input: [x_t, flag, masked latent], duplicated for CFG as [uncond, cond]
                model_input = torch.cat([latents] * 2) if do_cfg else latents
                model_input = scheduler.scale_model_input(model_input, t)
                model_input = torch.cat([model_input, image_condition], dim=1)
                # 7.2 predict (v-prediction in the official model); DeepCache: a full or a cached (shallow) step
                timestep = t.reshape(1).to(latents.device)  # one timestep for every row
                if cache is None:
                    prediction = runtime.unet(model_input, timestep, context, pose_features, grid)
                else:
                    prediction = cache.predict(runtime, i, do_cfg, model_input, timestep, context, pose_features, grid)
                # 7.3 guidance: u + w (c - u)
                if do_cfg:
                    uncond, cond = prediction.chunk(2)
                    prediction = uncond + guidance_scale * (cond - uncond)
                # 7.4 x_t -> x_{t-1}
                latents = scheduler.step(prediction, t, latents, return_dict=False,
                                         **step_arguments(scheduler, sampling.eta, step_generator))[0]
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
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        eta: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        progress: bool = True,
        runtime: Runtime | None = None,
        canvases: list[JointCanvas] | None = None,
        sampler: str | None = None,
        guidance_interval: tuple[float, float] | None = None,
        deepcache_interval: int | None = None,
        deepcache_branch: int | None = None,
        sampling: SamplingConfig | None = None,
        backend: Runtime | None = None,
    ) -> IMAGPosePipelineOutput | list[GenerationResult]:
        r"""Generate the target views of one or more requests.

        Safe to call from several threads at once: each call steps a scheduler of its own.

        The sampling settings are ``sampling`` (a :class:`~imagpose.sampling_config.SamplingConfig`; default: its
        defaults, with the sampler of ``pipe.scheduler``), and each of the keyword arguments ``num_inference_steps``,
        ``guidance_scale``, ``eta``, ``sampler``, ``guidance_interval``, ``deepcache_interval`` and
        ``deepcache_branch`` that is given replaces its field. Left out (None), they keep the value of ``sampling``.

        Args:
            requests: a :class:`~imagpose.canvas.PoseRequest` or a list (see :mod:`imagpose.scenarios`).
            num_inference_steps: denoising steps (paper 20; official script 30).
            guidance_scale: w in ``u + w (c - u)``; <= 1 disables classifier-free guidance.
            eta: DDIM eta (0 = deterministic).
            generator: a CPU generator (or one per request) overriding the requests' seeds.
            output_type: "pil", "pt" ((3, H, W) float tensors in [0, 1]) or "latent" (no decoding).
            callback_on_step_end: ``fn(pipe, step, t, {"latents", "prediction"}) -> dict | None``; a returned
                ``"latents"`` replaces the latents.
            progress: show a progress bar.
            runtime: a :class:`~imagpose.runtime.Runtime` (ONNX Runtime, TensorRT, ...) for this call; default
                the one of :meth:`set_runtime`, else PyTorch.
            canvases: the requests' canvases, already built with :meth:`build_canvas` (one per request).
            sampler: "ddim" (official), "dpmsolver++" or "unipc" (:mod:`imagpose.samplers`), on the same schedule;
                default: the sampler of ``pipe.scheduler`` (:attr:`sampler`).
            guidance_interval: ``(start, stop)``, fractions of the steps (0 = the first, noisiest): classifier-free
                guidance only on steps ``int(start * N) <= i < int(stop * N)``, one conditional UNet batch elsewhere
                (:mod:`imagpose.guidance`); None guides every step (the paper).
            deepcache_interval: DeepCache (:mod:`imagpose.deepcache`): a full UNet step every that many steps, the
                steps between reuse its deep feature; None (default) runs the whole UNet every step.
            deepcache_branch: the DeepCache skip branch, 0 (shallowest: fastest cached steps) to
                ``unet.num_skip_branches - 1``.
            sampling: every sampling setting in one :class:`~imagpose.sampling_config.SamplingConfig`.
            backend: the former name of ``runtime`` (deprecated; it warns).

        Raises:
            MemoryLimitError: the call's estimated peak memory exceeds the limit (:meth:`set_memory_limit`);
                raised before anything is loaded.
        """
        # 1. check inputs
        if backend is not None:
            warnings.warn("IMAGPosePipeline(..., backend=) is now runtime=; backend= will be removed.", FutureWarning,
                          stacklevel=2)
            runtime = runtime or backend
        requests = self.check_inputs(requests, output_type, generator, canvases)
        sampling = self.sampling_config(sampling, num_inference_steps=num_inference_steps,
                                        guidance_scale=guidance_scale, eta=eta, sampler=sampler,
                                        guidance_interval=guidance_interval, deepcache_interval=deepcache_interval,
                                        deepcache_branch=deepcache_branch)
        generators, seeds = self.resolve_generators(requests, generator)
        runtime = self.resolve_runtime(runtime)
        if sampling.deepcache is not None:
            check_deepcache_runtime(runtime, sampling.deepcache.branch)
        device, dtype = self._execution_device, self.unet.dtype

        # 2. refuse a call that would not fit in memory, before any image is loaded
        layouts = ([canvas.layout for canvas in canvases] if canvases is not None
                   else [self.request_layout(r) for r in requests])
        self.check_memory(layouts, sampling.guidance_scale, output_type, device)

        # 3. build canvases; requests with the same geometry are batched together
        canvases = list(canvases) if canvases is not None else [self.build_canvas(r) for r in requests]
        groups: dict = {}
        for index, canvas in enumerate(canvases):
            groups.setdefault(canvas.layout, []).append(index)

        results: list[GenerationResult | None] = [None] * len(requests)
        for layout, members in groups.items():
            group_generators = [generators[i] for i in members]
            # 4. encode conditions once per request (DINOv2 + FLC tokens, masked latent, flag, pose features)
            conditions = encode_conditions([canvases[i] for i in members], runtime, device, dtype)
            # 5. timesteps, on a scheduler of this call's own: threads sharing the pipeline cannot change them
            scheduler = make_sampler(sampling.sampler, self.scheduler.config)
            scheduler.set_timesteps(sampling.num_inference_steps, device=device)
            # 6. initial latents, one generator per request
            latents = self.prepare_latents(scheduler, group_generators, layout.latent_size, device,
                                           conditions.context.dtype)
            # 7. denoising loop
            latents = self.denoise(runtime, scheduler, latents, conditions, sampling, (layout.rows, layout.cols),
                                   group_generators, callback_on_step_end, progress)
            # 8. decode the canvas and 9. crop the target tiles (padding removed)
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
