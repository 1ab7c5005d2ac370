"""Export contracts: for each exportable component, its tensors, named dynamic axes, sample inputs and
TensorRT profile shapes, declared in one place (the TensorRT demo's ``BaseModel`` pattern).

Axis symbols (resolved per :class:`ShapeBucket` and model config by :func:`axis_values`):
    B     requests in one call                 2B   the UNet's CFG batch ([uncond, cond])
    H, W  latent canvas (padded tiles / 8)      PH, PW  pixel canvas (8H, 8W)
    N     context tokens = T + F               T    DINOv2 tokens (static: 1 + (224 / patch)^2)
    F     FLC tokens = (H / 16)(W / 16)         D    context width, C0 UNet width (static)
The UNet graph bakes in its view grid (rows x cols): the CVA split reshapes by it.

DeepCache graphs (exported only when asked: ``ExportOptions(deepcache_branches=(k, ...))``), one pair per skip branch
k: ``unet_deepcache_full_b<k>`` (the UNet's inputs; outputs prediction and ``deep_feature``) and
``unet_deepcache_shallow_b<k>`` (the UNet's inputs and ``deep_feature``; output prediction). The deep feature is
(2B, CF<k>, HF<k>, WF<k>): CF<k> channels at H / 2**l x W / 2**l (``IMAGPoseUNet.deepcache_feature``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from imagpose.canvas import GridLayout
from imagpose.errors import InvalidArgumentError
from imagpose.runtime import DEEPCACHE_METHODS, RUNTIME_METHODS, TorchRuntime

COMPONENTS = tuple(RUNTIME_METHODS)  # what an export holds by default
MAX_DEEPCACHE_BRANCHES = 24  # contracts exist for branches 0..23 (SD1.5 has 12)
DYNAMIC_SYMBOLS = ("B", "2B", "H", "W", "PH", "PW", "N", "F") + tuple(
    f"{axis}F{k}" for k in range(MAX_DEEPCACHE_BRANCHES) for axis in "HW")


def deepcache_component(form: str, branch: int) -> str:
    """The exported component of a DeepCache ``form`` ("unet_deepcache_full", "unet_deepcache_shallow") and branch."""
    return f"{form}_b{branch}"


def deepcache_components(branches) -> tuple[str, ...]:
    return tuple(deepcache_component(form, branch) for branch in branches for form in DEEPCACHE_METHODS)


def deepcache_form(component: str) -> tuple[str, int] | None:
    """(form, branch) of a DeepCache component name, None for any other component."""
    form, _, branch = component.rpartition("_b")
    return (form, int(branch)) if form in DEEPCACHE_METHODS and branch.isdigit() else None


def uses_grid(component: str) -> bool:
    """The UNet graphs (plain and DeepCache) take the view grid and the CFG batch 2B; the others neither."""
    return component == "unet" or deepcache_form(component) is not None


@dataclass(frozen=True)
class ShapeBucket:
    """One served shape: ``batch`` requests of a ``rows`` x ``cols`` grid of ``tile_height`` x ``tile_width`` tiles."""

    batch: int = 1
    tile_height: int = 512
    tile_width: int = 512
    rows: int = 2
    cols: int = 2
    cfg: bool = True

    def __post_init__(self):
        sizes = {"batch": self.batch, "tile_height": self.tile_height, "tile_width": self.tile_width,
                 "rows": self.rows, "cols": self.cols}
        bad = {name: value for name, value in sizes.items()
               if isinstance(value, bool) or not isinstance(value, int) or value < 1}
        if bad:
            raise InvalidArgumentError(f"A shape bucket's sizes must be integers >= 1, got {bad}.")

    @classmethod
    def parse(cls, text: str) -> ShapeBucket:
        """``"batch,tileHxtileW,RxC"`` e.g. ``"1,512x512,2x2"``."""
        try:
            batch, tile, grid = text.split(",")
            th, tw = (int(v) for v in tile.lower().split("x"))
            rows, cols = (int(v) for v in grid.lower().split("x"))
            return cls(int(batch), th, tw, rows, cols)
        except ValueError as exc:
            raise InvalidArgumentError(f"Bucket {text!r} must look like BATCH,TILE_HxTILE_W,ROWSxCOLS "
                                       "e.g. 1,512x512,2x2") from exc

    def layout(self, pad_multiple: int) -> GridLayout:
        return GridLayout(self.rows, self.cols, self.tile_height, self.tile_width, pad_multiple)

    def label(self) -> str:
        return f"b{self.batch}_{self.tile_height}x{self.tile_width}_{self.rows}x{self.cols}"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # ints and axis symbols

    def dims(self, values: dict) -> tuple[int, ...]:
        return tuple(values[d] if isinstance(d, str) else d for d in self.shape)


@dataclass(frozen=True)
class ExportContract:
    component: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    float_inputs: tuple[str, ...] = ()  # inputs kept in float32 whatever the export dtype (the timestep)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes = {}
        for spec in self.inputs + self.outputs:
            named = {i: d for i, d in enumerate(spec.shape) if isinstance(d, str) and d in DYNAMIC_SYMBOLS}
            if named:
                axes[spec.name] = named
        return axes

    def input_shapes(self, values: dict) -> dict[str, tuple[int, ...]]:
        return {spec.name: spec.dims(values) for spec in self.inputs}

    def sample_inputs(self, values: dict, dtype: torch.dtype = torch.float32, device="cpu",
                      seed: int = 0) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(seed)
        tensors = []
        for spec in self.inputs:
            shape = spec.dims(values)
            if spec.name == "timestep":
                tensor = torch.randint(0, 1000, shape, generator=generator).float()
            elif spec.name in ("pixels", "pose"):
                tensor = torch.rand(shape, generator=generator) * (2 if spec.name == "pixels" else 1) - (
                    1 if spec.name == "pixels" else 0)
            else:
                tensor = torch.randn(shape, generator=generator)
            target = torch.float32 if spec.name in self.float_inputs else dtype
            tensors.append(tensor.to(device=device, dtype=target))
        return tuple(tensors)

    def profile(self, buckets: list[ShapeBucket], config: dict) -> dict[str, tuple[tuple, tuple, tuple]]:
        """TensorRT (min, opt, max) shape per input over the buckets; opt is the first bucket."""
        shapes = [self.input_shapes(axis_values(b, config)) for b in buckets]
        out = {}
        for name in self.input_names:
            dims = [s[name] for s in shapes]
            out[name] = (tuple(map(min, zip(*dims))), dims[0], tuple(map(max, zip(*dims))))
        return out


def model_config(pipe) -> dict:
    """The static numbers the contracts need, read from a pipeline."""
    encoder = pipe.image_encoder.config
    return {
        "D": pipe.unet.config.cross_attention_dim,
        "C0": pipe.unet.config.block_out_channels[0],
        "T": 1 + (224 // encoder.patch_size) ** 2,
        "flc_patch": pipe.flc_tokenizer.config.patch_size,
        "pad_multiple": pipe.pad_multiple,
        "vae_scale": pipe.vae_scale_factor,
        "deepcache_features": [list(pipe.unet.deepcache_feature(k)) for k in range(pipe.unet.num_skip_branches)],
    }


def axis_values(bucket: ShapeBucket, config: dict) -> dict[str, int]:
    layout = bucket.layout(config["pad_multiple"])
    height, width = layout.latent_size
    p = config["flc_patch"]
    flc_tokens = (height // p) * (width // p)
    values = {"B": bucket.batch, "2B": bucket.batch * (2 if bucket.cfg else 1), "H": height, "W": width,
              "PH": height * config["vae_scale"], "PW": width * config["vae_scale"], "F": flc_tokens,
              "N": config["T"] + flc_tokens, "T": config["T"], "D": config["D"], "C0": config["C0"]}
    for k, (channels, downscale) in enumerate(config.get("deepcache_features", [])):  # older manifests: none
        values |= {f"CF{k}": channels, f"HF{k}": height // downscale, f"WF{k}": width // downscale}
    return values


CONTRACTS = {
    "unet": ExportContract(
        "unet",
        inputs=(TensorSpec("sample", ("2B", 9, "H", "W")), TensorSpec("timestep", ("2B",)),
                TensorSpec("encoder_hidden_states", ("2B", "N", "D")),
                TensorSpec("pose_features", ("2B", "C0", "H", "W"))),
        outputs=(TensorSpec("prediction", ("2B", 4, "H", "W")),),
        float_inputs=("timestep",),
    ),
    "vae_encoder": ExportContract("vae_encoder", (TensorSpec("pixels", ("B", 3, "PH", "PW")),),
                                  (TensorSpec("latents", ("B", 4, "H", "W")),)),
    "vae_decoder": ExportContract("vae_decoder", (TensorSpec("latents", ("B", 4, "H", "W")),),
                                  (TensorSpec("images", ("B", 3, "PH", "PW")),)),
    "image_encoder": ExportContract("image_encoder", (TensorSpec("pixel_values", ("B", 3, 224, 224)),),
                                    (TensorSpec("tokens", ("B", "T", "D")),)),
    "pose_guider": ExportContract("pose_guider", (TensorSpec("pose", ("B", 3, "PH", "PW")),),
                                  (TensorSpec("pose_features", ("B", "C0", "H", "W")),)),
    "flc_tokenizer": ExportContract("flc_tokenizer", (TensorSpec("latents", ("B", 4, "H", "W")),),
                                    (TensorSpec("tokens", ("B", "F", "D")),)),
}




def _deepcache_contracts(branch: int) -> dict[str, ExportContract]:
    unet = CONTRACTS["unet"]
    feature = TensorSpec("deep_feature", ("2B", f"CF{branch}", f"HF{branch}", f"WF{branch}"))
    full, shallow = (deepcache_component(form, branch) for form in DEEPCACHE_METHODS)
    return {full: ExportContract(full, unet.inputs, unet.outputs + (feature,), unet.float_inputs),
            shallow: ExportContract(shallow, unet.inputs + (feature,), unet.outputs, unet.float_inputs)}


CONTRACTS |= {name: contract for branch in range(MAX_DEEPCACHE_BRANCHES)
              for name, contract in _deepcache_contracts(branch).items()}


class ComponentModule(nn.Module):
    """A component as a plain-tensor module for export: the TorchRuntime method, so torch and ONNX agree."""

    def __init__(self, pipe, component: str, grid: tuple[int, int] = (2, 2)):
        super().__init__()
        if component not in CONTRACTS:
            raise InvalidArgumentError(f"Unknown component {component!r}; choose from {', '.join(COMPONENTS)} or a "
                                       "DeepCache pair unet_deepcache_full_b<k>, unet_deepcache_shallow_b<k>.")
        self.component, self.grid = component, tuple(grid)
        # register only the modules this component uses, so the exported graph holds only their weights
        needs = ("unet",) if uses_grid(component) else {
            "vae_encoder": ("vae",), "vae_decoder": ("vae",), "image_encoder": ("image_encoder",),
            "pose_guider": ("pose_guider",), "flc_tokenizer": ("flc_tokenizer",)}[component]
        for name in needs:
            self.add_module(name, getattr(pipe, name))
        self.runtime = TorchRuntime(pipe.unet, pipe.vae, pipe.image_encoder,
                                    pipe.flc_tokenizer, pipe.pose_guider)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return call_runtime(self.runtime, self.component, inputs, self.grid)


def call_runtime(runtime, component: str, inputs, grid: tuple[int, int]) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Run ``component`` on any Runtime: its method from ``RUNTIME_METHODS`` (or ``DEEPCACHE_METHODS``, which also
    take the branch); only the UNet graphs take the grid."""
    if (deepcache := deepcache_form(component)) is not None:
        form, branch = deepcache
        return getattr(runtime, DEEPCACHE_METHODS[form])(*inputs, grid, branch)
    method = getattr(runtime, RUNTIME_METHODS[component])
    return method(*inputs, grid) if component == "unet" else method(*inputs)
