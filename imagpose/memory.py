"""Peak memory of a pipeline call, estimated from the configs and the canvas geometry before anything runs.

A call runs its phases one after the other, so its peak is what every phase keeps plus the largest phase:

    peak    = weights + RUNTIME_OVERHEAD + canvases (every request of the call) + MARGIN x activations
    activations = max(encode, denoise, decode) + RETAINED x (the other two phases)
    encode  = max(VAE encoder, pose guider) on one canvas (the once-per-request networks run one at a time)
    denoise = conditions (x3: the CFG copies) + UNet activations of the group at its CFG batch
    decode  = the group's decoded canvases + the VAE decoder on one canvas

Each network's activations are ``copies x widest full-resolution tensor``: the VAE encoder's first stage and the
VAE decoder's last upsampler at canvas size (:func:`imagpose.autoencoders.full_resolution_widths`), the pose
guider's first stage, the UNet's first level (``block_out_channels[0]`` at latent size, per CFG row). Attention
adds nothing that grows faster: ``scaled_dot_product_attention`` (UNet and VAE self-attention) runs a flash /
memory-efficient kernel that never holds the (N, N) scores on CPU and on CUDA, and the CVA attends over the V views
of one position. The copies (and the runtime overhead) are measured, not derived:
peak RSS of a subprocess on CPU (torch 2.13, oneDNN) for the tiny and mid presets at 128^2 to 1024^2 canvases
(tests/core/test_memory.py re-measures two sizes), with ``MARGIN`` on top because under-counting is the dangerous
direction. ``RETAINED``: freed memory of the other phases that the allocator keeps (heap fragmentation grows the
peak past the largest phase, most with batches). Accuracy on those measurements: 1.0-1.6x the measured peak (the
largest single canvases are over-estimated most). Not yet measured on CUDA, where the caching allocator keeps freed
blocks too: treat the estimate there as approximate.

The limit: :meth:`IMAGPosePipeline.set_memory_limit` (the CLI's ``--max-memory-gib``), else the environment
variable ``IMAGPOSE_MAX_MEMORY_GIB``, else the weights plus ``DEFAULT_FRACTION`` of the memory still available on
the pipeline's device (``torch.cuda.mem_get_info`` on CUDA, ``psutil.virtual_memory().available`` elsewhere).
"""

from __future__ import annotations

import math
import os
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from PIL import Image

from .autoencoders import full_resolution_widths
from .canvas import GridLayout, PoseRequest
from .errors import InvalidArgumentError, MemoryLimitError
from .images import load_image

GIB = 2**30
ENV_LIMIT = "IMAGPOSE_MAX_MEMORY_GIB"
DEFAULT_FRACTION = 0.8  # of the memory still available on the device, on top of the weights already there
MARGIN = 1.15  # on the activations: an estimate that under-counts is the dangerous direction (RSS varies ~8%)
RETAINED = 0.5  # of the phases that are not the largest, still held by the allocator at the peak

# Live copies of each network's widest full-resolution tensor at its peak (see the module docstring), and the
# size-independent cost of a first call (allocator arenas, oneDNN kernels, PIL): measured on CPU.
VAE_DECODER_COPIES = 3.0
VAE_DECODER_FIXED_CHANNELS = 60  # the last stage's narrower tensors and the 3-channel output, as channels
VAE_ENCODER_COPIES = 3.9
POSE_GUIDER_COPIES = 5.0
UNET_COPIES = 46.0
RUNTIME_OVERHEAD = 64 * 2**20
WEIGHTS_OVERHEAD = 1.05  # module objects and allocator rounding around the parameters
CONDITION_COPIES = 3  # the conditions, and their [uncond, cond] CFG copies held through the denoising loop
CANVAS_BYTES_PER_PIXEL = 2 * 3 * 4  # the float32 person and pose canvases of every request


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated bytes of one call; ``peak`` is what the limit is checked against."""

    weights: int
    overhead: int
    canvases: int
    encode: int
    denoise: int
    decode: int
    largest_canvas: tuple[int, int]  # (height, width) in pixels
    batch: int  # requests of the largest group

    @property
    def activations(self) -> int:
        phases = (self.encode, self.denoise, self.decode)
        return round(MARGIN * (max(phases) + RETAINED * (sum(phases) - max(phases))))

    @property
    def peak(self) -> int:
        return self.weights + self.overhead + self.canvases + self.activations

    def describe(self) -> str:
        phases = {"encode": self.encode, "denoise": self.denoise, "decode": self.decode}
        largest = max(phases, key=phases.get)
        height, width = self.largest_canvas
        return (f"{gib(self.peak)} (weights {gib(self.weights)}, activations {gib(self.activations)}: the {largest} "
                f"of a {height}x{width} canvas alone {gib(phases[largest])})")


def gib(n: int | float) -> str:
    return f"{n / GIB:.2f} GiB"


# ---------------------------------------------------------------------- estimate
def estimate_call_memory(pipe, layouts: list[GridLayout], do_cfg: bool = True, decode: bool = True) -> MemoryEstimate:
    """Estimate the peak memory of ``pipe(requests)`` for requests with these canvas layouts (one per request)."""
    element = next(pipe.unet.parameters()).element_size()  # (ModelMixin.dtype walks every module)
    groups = Counter(layouts)  # the pipeline runs requests of one layout together, one group after the other
    phases = [_group_phases(pipe, layout, count, do_cfg, decode, element) for layout, count in groups.items()]
    encode, denoise, decoding = (max(p[i] for p in phases) for i in range(3))
    largest = max(groups, key=lambda layout: layout.canvas_size[0] * layout.canvas_size[1] * groups[layout])
    canvases = sum(_pixels(layout) * CANVAS_BYTES_PER_PIXEL for layout in layouts)
    weights = weight_bytes(pipe)
    return MemoryEstimate(weights=weights, overhead=RUNTIME_OVERHEAD + round((WEIGHTS_OVERHEAD - 1) * weights),
                          canvases=canvases,
                          encode=encode, denoise=denoise, decode=decoding, largest_canvas=largest.canvas_size,
                          batch=groups[largest])


def _group_phases(pipe, layout: GridLayout, batch: int, do_cfg: bool, decode: bool,
                  element: int) -> tuple[int, int, int]:
    """(encode, denoise, decode) bytes of one group of ``batch`` requests on ``layout``."""
    pixels, latent = _pixels(layout), layout.latent_size[0] * layout.latent_size[1]
    unet = pipe.unet.config
    # encode: the reference and the masked canvas in [-1, 1], and the pose canvas, then the widest network
    encoder_width, decoder_width = full_resolution_widths(pipe.vae)
    vae_encoder = VAE_ENCODER_COPIES * encoder_width
    pose_guider = POSE_GUIDER_COPIES * pipe.pose_guider.config.block_out_channels[0]
    encode = pixels * element * (3 * 3 + max(vae_encoder, pose_guider))
    # denoise: conditions (context tokens, masked latent + flag, pose features) and the UNet at the CFG batch
    rows = 2 * batch if do_cfg else batch
    tokens = 257 + latent // pipe.flc_tokenizer.config.patch_size**2  # DINOv2 (224 px) + FLC tokens
    conditions = batch * element * (tokens * unet.cross_attention_dim
                                    + latent * (5 + pipe.pose_guider.config.conditioning_embedding_channels))
    denoise = CONDITION_COPIES * conditions + rows * latent * element * UNET_COPIES * unet.block_out_channels[0]
    # decode: one canvas at a time, the decoded canvases of the group kept (3 channels each)
    decoding = 0
    if decode:
        decoder = VAE_DECODER_COPIES * decoder_width + VAE_DECODER_FIXED_CHANNELS
        decoding = pixels * element * (3 * batch + decoder)
    return round(encode), round(denoise), round(decoding)


def _pixels(layout: GridLayout) -> int:
    height, width = layout.canvas_size
    return height * width


def weight_bytes(pipe) -> int:
    """Bytes of the parameters and buffers of the pipeline's networks."""
    modules = (pipe.unet, pipe.vae, pipe.image_encoder, pipe.flc_tokenizer, pipe.pose_guider)
    return sum(_module_bytes(module) for module in modules)


# module -> ((dtype, device) of its first parameter, bytes): summing ~1000 tensors costs ~8 ms, and every call
# checks its memory; a dtype or device change (``pipe.to(...)``) counts again
_MODULE_BYTES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _module_bytes(module: torch.nn.Module) -> int:
    first = next(module.parameters(), None)
    key = None if first is None else (first.dtype, first.device)
    cached = _MODULE_BYTES.get(module)
    if cached is None or cached[0] != key:
        cached = key, sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
        _MODULE_BYTES[module] = cached
    return cached[1]


def request_layout(request: PoseRequest, pad_multiple: int, vae_scale: int) -> GridLayout:
    """The canvas geometry of a request without loading its images (a file's header gives its size)."""
    if request.tile_size is not None:
        height, width = request.tile_size
    else:
        width, height = _image_size(request.views[request.source_indices[0]].image)
    return GridLayout(request.grid[0], request.grid[1], height, width, pad_multiple, vae_scale)


EXIF_ORIENTATION = 0x0112


def _image_size(source) -> tuple[int, int]:
    """(width, height) of a person image; a file is opened lazily (PIL reads the header only)."""
    if isinstance(source, Image.Image):
        return source.size
    if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        try:
            with Image.open(source) as handle:
                # EXIF orientations 5-8 rotate by 90 degrees: load_image applies them, so the size swaps
                rotated = handle.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
                return handle.size[::-1] if rotated else handle.size
        except (OSError, SyntaxError, ValueError):
            pass  # load_image below reports the file the way every other input error is reported
    return load_image(source, "person image").size


# ---------------------------------------------------------------------- limit
def check_memory_limit(limit_bytes: int | None) -> int | None:
    """``limit_bytes`` if it is a usable limit (a positive integer or None), else InvalidArgumentError."""
    if limit_bytes is None:
        return None
    if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or limit_bytes <= 0:
        raise InvalidArgumentError(f"The memory limit must be a positive number of bytes (or None for the default), "
                                   f"got {limit_bytes!r}.")
    return limit_bytes


def resolve_memory_limit(limit_bytes: int | None, device: torch.device, resident_bytes: int) -> int:
    """The limit in bytes: ``limit_bytes``, else ``IMAGPOSE_MAX_MEMORY_GIB``, else the default for ``device``."""
    if limit_bytes is not None:
        return limit_bytes
    text = os.environ.get(ENV_LIMIT)
    if text:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise InvalidArgumentError(f"{ENV_LIMIT}={text!r} is not a positive number of GiB (e.g. 24 or 7.5); "
                                       "fix or unset it.")
        return int(value * GIB)
    return resident_bytes + int(DEFAULT_FRACTION * available_bytes(device))


def available_bytes(device: torch.device) -> int:
    """Memory still free on ``device``: CUDA's free memory, else the system's available memory."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    return psutil.virtual_memory().available


def check_memory(estimate: MemoryEstimate, limit: int) -> None:
    """Raise :class:`MemoryLimitError` (with the estimate, the limit and the fixes) when the estimate exceeds it."""
    if estimate.peak <= limit:
        return
    raise MemoryLimitError(
        f"This call needs an estimated {estimate.describe()}, over the memory limit of {gib(limit)}. Use a smaller "
        f"tile (--tile-size, or tile_size= in the request; the tile defaults to the image size), fewer requests per "
        f"call, or raise the limit: pipe.set_memory_limit(bytes), --max-memory-gib, or {ENV_LIMIT}.")
