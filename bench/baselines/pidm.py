"""PIDM (Bhunia et al., "Person Image Synthesis via Denoising Diffusion Model", CVPR 2023), re-implemented.

Follows the public code ``ankanbhunia/PIDM`` @ ``e4f1d88``:

- ``config/diffconfig.py::get_model_conf``: the released network configuration;
- ``models/unet.py`` (``BeatGANsUNetModel``, ``BeatGANsEncoder``), ``models/unet_autoenc.py``
  (``BeatGANsAutoencModel.forward`` / ``forward_with_cond_scale``, ``TimeStyleSeperateEmbed``), ``models/blocks.py``
  (``ResBlock``, ``apply_conditions``, ``AttentionBlock``, ``QKVAttentionLegacy``), ``models/nn.py``;
- ``diffusion.py::ddim_steps`` / ``compute_alpha`` and ``config/diffusion.conf``: the sampler;
- ``utils/gen.py``: the evaluation generator (DDIM, ``nsteps = 100``).

Written from the behaviour of that code (plain PyTorch), not copied. What runs at inference:

- **Texture encoder** ``E`` (``BeatGANsEncoder``): the encoder half of the UNet on the 3-channel source image, same
  channel multipliers, residual blocks and resblock down-sampling, no attention, no time embedding. It returns the
  18 feature maps after each of its blocks, ``F = [f_0 .. f_17]``.
- **Denoiser** ``eps_theta`` (``BeatGANsAutoencModel``): a pixel-space BeatGANs UNet on ``cat(x_t, pose)``
  (3 + 20 = 23 channels) with 6 outputs (eps + learned variance). Residual blocks are modulated by the time embedding
  only (scale/shift after the second GroupNorm). The last residual block of every 32/16/8 px level (encoder and
  decoder path) and the middle block carry a 1-head **cross-attention-only** block (the self-attention is
  commented out in the released ``AttentionBlock``): queries from GroupNorm(h), keys/values from the texture feature
  of the same index (input block ``k`` <- ``f_k``, middle <- ``f_17``, output block ``k`` <- ``f_{17-k}``, i.e. the
  feature of the same index as the block's skip connection).
- **Sampler**: linear betas 1e-4 -> 2e-2, T = 1000; DDIM (eta = 0) over ``range(0, 1000, 1000 // steps)``;
  each step runs the denoiser twice, sequentially (``forward_with_cond_scale``): with the source features and with
  the features of an all-zero image; ``eps = eps_null + 2 * (eps_cond - eps_null)`` (scale hard-coded in
  ``ddim_steps``), taking the eps half of the 6-channel output. The result is clamped to [-1, 1] (``utils/gen.py``).

Parameter parity: the released modules also hold weights that inference never touches, and they are kept here so
that parameter counts match the public model (they are marked "unused" below): every residual block's
``emb_layers``/``cond_emb_layers`` in the texture encoder and ``cond_emb_layers`` in the denoiser
(``TimestepEmbedSequential`` passes ``cond=None`` to residual blocks), the texture encoder's time-embedding MLP, and
each attention block's self-attention ``qkv`` and ``proj_out1``. They cost no FLOPs.

Sizes: ``"full"`` is the released configuration (142.1 M denoiser + 38.3 M texture encoder parameters).
``"reduced"`` is the same structure at half the width (``model_channels = 64``; all levels, blocks, attention,
heads, embedding size 512 unchanged): 39.1 M + 11.0 M parameters (0.28x) and 0.25x the FLOPs, for CPU timing.
Half width is the narrowest "~0.4x" choice that keeps every GroupNorm at 32 groups (48 channels would not divide
into 32 groups).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..meter import Meter, count_flops
from .base import Method, MethodInfo, Setting

SOURCE = "ankanbhunia/PIDM@e4f1d88"
NUM_TRAIN_TIMESTEPS = 1000  # config/diffusion.conf: n_timestep
BETA_START, BETA_END = 1e-4, 2e-2  # config/diffusion.conf: linear_start, linear_end
GUIDANCE_SCALE = 2.0  # diffusion.py::ddim_steps: cond_scale=2 (hard-coded; the --cond_scale flag is ignored)
POSE_CHANNELS = 20  # 3-channel RGB skeleton + 17 limb distance maps (data/fashion_data.py)


@dataclass(frozen=True)
class PIDMConfig:
    """The released ``get_model_conf()`` values that shape the networks."""

    image_size: int = 256
    in_channels: int = 3 + POSE_CHANNELS  # noisy image + pose map
    out_channels: int = 6  # eps + learned variance (learn_sigma)
    texture_in_channels: int = 3
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    embed_channels: int = 512
    dropout: float = 0.1
    num_heads: int = 1

    @property
    def attention_levels(self) -> tuple[int, ...]:
        """UNet levels (0 = full resolution) whose resolution, for the built ``image_size``, gets attention."""
        return tuple(lv for lv in range(len(self.channel_mult)) if self.image_size >> lv in self.attention_resolutions)


CONFIGS = {"full": PIDMConfig(), "reduced": PIDMConfig(model_channels=64)}


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 and cast back (``models/nn.py::normalization``: min(32, C) groups)."""

    def __init__(self, channels: int):
        super().__init__(min(32, channels), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding, [cos | sin] order as in ``models/nn.py``. t: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    """BeatGANs residual block: GN-SiLU-conv3x3 -> GN -> (1 + scale) * h + shift -> SiLU-dropout-conv3x3, + skip.

    ``resample`` ("up" / "down", nearest x2 / avg-pool /2) is applied to both paths between the first SiLU and conv
    (``resblock_updown``). The time modulation is applied only when ``emb`` is given (the texture encoder passes
    none). ``cond_emb_layers`` exists in the released model but is never called at inference.
    """

    def __init__(self, channels: int, out_channels: int, emb_channels: int, dropout: float,
                 resample: str | None = None):
        super().__init__()
        self.resample = resample
        self.in_norm = GroupNorm32(channels)
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.cond_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(out_channels, out_channels))  # unused
        self.out_norm = GroupNorm32(out_channels)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout),
                                        zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.in_conv(self._resample(F.silu(self.in_norm(x))))
        x = self._resample(x)
        h = self.out_norm(h)
        if emb is not None:  # time embedding (B, E) -> scale, shift (B, C_out, 1, 1)
            scale, shift = self.emb_layers(emb)[..., None, None].to(h.dtype).chunk(2, dim=1)
            h = h * (1 + scale) + shift
        return self.skip(x) + self.out_layers(h)


class CrossAttentionBlock(nn.Module):
    """PIDM's ``AttentionBlock`` as released: cross-attention only, ``num_heads`` = 1 (legacy QKV order).

    h: (B, C, H, W) gives the queries, GN first; f: the texture feature (B, C, H, W), no norm, gives keys/values.
    out = h + proj_out(V softmax(Q^T K / sqrt(C))^T). Explicit matmuls (FLOP-countable on any device).
    ``qkv``/``proj_out1`` belong to the commented-out self-attention: in the checkpoint, never called.
    """

    def __init__(self, channels: int, num_heads: int = 1):
        super().__init__()
        if num_heads != 1:
            raise ValueError("the released PIDM attention uses num_heads=1 (legacy QKV split)")
        self.norm = GroupNorm32(channels)
        self.to_q = nn.Conv1d(channels, channels, 1)
        self.to_kv = nn.Conv1d(channels, 2 * channels, 1)
        self.proj_out = zero_init(nn.Conv1d(channels, channels, 1))  # released name: proj_out2
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)  # unused
        self.proj_out1 = zero_init(nn.Conv1d(channels, channels, 1))  # unused

    def forward(self, h: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        b, c, height, width = h.shape
        h = h.reshape(b, c, -1)  # (B, C, N), N = H*W query tokens
        q = self.to_q(self.norm(h))  # (B, C, N)
        k, v = self.to_kv(f.reshape(b, c, -1)).chunk(2, dim=1)  # (B, C, M) each, M = N
        logits = torch.bmm(q.transpose(1, 2), k) / math.sqrt(c)  # (B, N, M)
        weights = torch.softmax(logits.float(), dim=-1).to(v.dtype)
        out = torch.bmm(v, weights.transpose(1, 2))  # (B, C, N)
        return (h + self.proj_out(out)).reshape(b, c, height, width)


class Stage(nn.Sequential):
    """One UNet block (``TimestepEmbedSequential``): residual blocks get the time embedding, attention the
    texture feature; the skip connection (decoder) is concatenated on channels before the first layer."""

    def forward(self, x, emb=None, feature=None, skip=None):
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, CrossAttentionBlock):
                x = layer(x, feature)
            else:
                x = layer(x)
        return x


def _encoder_path(cfg: PIDMConfig, in_channels: int, attention: bool) -> tuple[nn.ModuleList, list[int]]:
    """The UNet's down path: conv_in, then per level ``num_res_blocks`` residual blocks (+ attention on the last one
    at attention levels) and a resblock down-sampler between levels. Returns blocks and their output channels."""
    ch = cfg.model_channels * cfg.channel_mult[0]
    blocks, channels = nn.ModuleList([Stage(nn.Conv2d(in_channels, ch, 3, padding=1))]), [ch]
    for level, mult in enumerate(cfg.channel_mult):
        for i in range(cfg.num_res_blocks):
            out = cfg.model_channels * mult
            layers = [ResBlock(ch, out, cfg.embed_channels, cfg.dropout)]
            if attention and level in cfg.attention_levels and i == cfg.num_res_blocks - 1:
                layers.append(CrossAttentionBlock(out, cfg.num_heads))
            blocks.append(Stage(*layers))
            ch = out
            channels.append(ch)
        if level != len(cfg.channel_mult) - 1:
            blocks.append(Stage(ResBlock(ch, ch, cfg.embed_channels, cfg.dropout, resample="down")))
            channels.append(ch)
    return blocks, channels


class TextureEncoder(nn.Module):
    """``BeatGANsEncoder``: source image (B, 3, H, W) -> 18 feature maps [f_0 .. f_17] (one per down-path block).

    ``time_embed`` and the residual blocks' embedding layers exist in the released model but are not used
    (the encoder runs without a time embedding).
    """

    def __init__(self, cfg: PIDMConfig):
        super().__init__()
        self.time_embed = nn.Sequential(nn.Linear(cfg.model_channels, cfg.embed_channels), nn.SiLU(),
                                        nn.Linear(cfg.embed_channels, cfg.embed_channels))  # unused
        self.input_blocks, self.feature_channels = _encoder_path(cfg, cfg.texture_in_channels, attention=False)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        features, h = [], image
        for block in self.input_blocks:
            h = block(h)
            features.append(h)
        return features


class PIDMUNet(nn.Module):
    """The denoiser ``eps_theta(cat(x_t, pose), t, F)``: (B, 23, H, W) -> (B, 6, H, W) = [eps | variance]."""

    def __init__(self, cfg: PIDMConfig):
        super().__init__()
        self.model_channels = cfg.model_channels
        emb = cfg.embed_channels
        self.time_embed = nn.Sequential(nn.Linear(cfg.model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.input_blocks, skip_channels = _encoder_path(cfg, cfg.in_channels, attention=True)
        ch = skip_channels[-1]
        self.middle_block = Stage(ResBlock(ch, ch, emb, cfg.dropout), CrossAttentionBlock(ch, cfg.num_heads),
                                  ResBlock(ch, ch, emb, cfg.dropout))
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(cfg.channel_mult))):
            out = cfg.model_channels * cfg.channel_mult[level]
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), out, emb, cfg.dropout)]
                ch = out
                if level in cfg.attention_levels and i == cfg.num_res_blocks - 1:
                    layers.append(CrossAttentionBlock(ch, cfg.num_heads))
                if level and i == cfg.num_res_blocks:
                    layers.append(ResBlock(ch, ch, emb, cfg.dropout, resample="up"))
                self.output_blocks.append(Stage(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(),
                                 zero_init(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """x: (B, 23, H, W) noisy image + pose; t: (B,) timesteps; features: the 18 texture maps, batch B."""
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(x.dtype))  # (B, 512)
        skips, h = [], x
        for k, block in enumerate(self.input_blocks):
            h = block(h, emb, features[k])
            skips.append(h)
        h = self.middle_block(h, emb, features[-1])
        for k, block in enumerate(self.output_blocks):
            h = block(h, emb, features[-k - 1], skip=skips.pop())
        return self.out(h)


def ddim_timesteps(steps: int) -> list[int]:
    """The released sequence ``range(0, 1000, 1000 // steps)``, in sampling (descending) order."""
    seq = list(range(0, NUM_TRAIN_TIMESTEPS, NUM_TRAIN_TIMESTEPS // steps))
    if len(seq) != steps:
        raise ValueError(f"range(0, 1000, 1000 // {steps}) has {len(seq)} timesteps, not {steps}: "
                         "use a step count that divides 1000")
    return seq[::-1]


RELEASED = Setting(
    "as_released", resolution=(256, 256), steps=100, evals_per_step=2, batched_cfg=False, precision="fp32",
    scheduler="ddim",
    notes="utils/gen.py default --sample_algorithm ddim: DDIM-100 (range(0,1000,10)), eta 0; '--sample_algorithm "
          "ddpm' runs deterministic DDIM over all 1000 steps; README/predict.py/Colab and train.py validation use 50. "
          "CFG: 2 sequential forwards (source / all-zero-image texture features), scale 2 hard-coded in ddim_steps. "
          "Texture encoder twice per generation. 256x256 pixel space (metrics resize to 176x256); fp32, no autocast.")


class PIDM(Method):
    """PIDM as a benchmarked method: texture encoder + pixel-space UNet denoiser, DDIM with sequential CFG."""

    info = MethodInfo(
        name="PIDM",
        paper="Bhunia et al., Person Image Synthesis via Denoising Diffusion Model, CVPR 2023",
        source=SOURCE,
        released=RELEASED,
        expected_params={"denoiser": 142.1, "texture_encoder": 38.3},
        expected_tflops={"denoiser_256": 0.559, "texture_encoder_256": 0.140},
    )

    def __init__(self, size: str = "full"):
        """``size``: "full" (released config) or "reduced" (model_channels 64, same structure; CPU timing).

        Built on the current default device (``with torch.device("meta")`` for counts). ``info.expected_*`` are the
        figures of "full"."""
        super().__init__()
        if size not in CONFIGS:
            raise ValueError(f"size must be one of {sorted(CONFIGS)}, got {size!r}")
        self.size, self.config = size, CONFIGS[size]
        self.texture_encoder = TextureEncoder(self.config)
        self.denoiser = PIDMUNet(self.config)
        # alpha_bar_t of the linear schedule (float64, CPU); alpha_bar_{-1} = 1 (diffusion.py::compute_alpha)
        betas = torch.linspace(BETA_START, BETA_END, NUM_TRAIN_TIMESTEPS, dtype=torch.float64, device="cpu")
        self._alphas_cumprod = torch.cumprod(1 - betas, dim=0).tolist()
        self.eval()

    def param_groups(self) -> dict[str, nn.Module]:
        return {"denoiser": self.denoiser, "texture_encoder": self.texture_encoder}

    def example_inputs(self, batch: int, setting: Setting, device, dtype, generator=None) -> dict:
        """``source``: (B, 3, H, W) in [-1, 1]; ``pose``: (B, 20, H, W) in [0, 1] (skeleton + limb distance maps)."""
        height, width = setting.resolution

        def rand(*shape):
            if generator is not None:
                return torch.rand(shape, generator=generator).to(device, dtype)
            return torch.rand(shape, device=device, dtype=dtype)

        return {"source": rand(batch, 3, height, width) * 2 - 1, "pose": rand(batch, POSE_CHANNELS, height, width)}

    def _alpha_bar(self, t: int) -> float:
        return 1.0 if t < 0 else self._alphas_cumprod[t]

    def _eps(self, x: torch.Tensor, pose: torch.Tensor, t: torch.Tensor, cond: list, null: list,
             setting: Setting) -> torch.Tensor:
        """Guided eps for one step: eps_null + s * (eps_cond - eps_null), eps = first 3 of the 6 outputs."""
        model_input = torch.cat([x, pose], dim=1)  # (B, 23, H, W)
        if setting.evals_per_step == 1:  # no guidance
            return self.denoiser(model_input, t, cond)[:, :3]
        if setting.evals_per_step != 2:
            raise ValueError(f"PIDM runs 1 or 2 denoiser evaluations per step, not {setting.evals_per_step}")
        if setting.batched_cfg:  # one forward at batch 2B (not the released behaviour)
            both = [torch.cat([c, n]) for c, n in zip(cond, null)]
            eps_cond, eps_null = self.denoiser(torch.cat([model_input] * 2), torch.cat([t] * 2), both)[:, :3].chunk(2)
        else:  # released forward_with_cond_scale: two sequential forwards, cond (prob=1) then null (prob=0)
            eps_cond = self.denoiser(model_input, t, cond)[:, :3]
            eps_null = self.denoiser(model_input, t, null)[:, :3]
        return eps_null + GUIDANCE_SCALE * (eps_cond - eps_null)

    @torch.no_grad()
    def generate(self, inputs: dict, setting: Setting, meter: Meter, generator=None) -> torch.Tensor:
        """DDIM (eta = 0) with PIDM's CFG; returns images (B, 3, H, W) in [-1, 1]."""
        source, pose = inputs["source"], inputs["pose"]
        batch, _, height, width = source.shape
        with meter.stage("encoders"):  # ddim_steps: encode(source) and encode(zeros), once per generation
            cond = self.texture_encoder(source)
            null = self.texture_encoder(torch.zeros_like(source))
        shape = (batch, 3, height, width)
        x = (torch.randn(shape, generator=generator, dtype=source.dtype).to(source.device) if generator is not None
             else torch.randn(shape, device=source.device, dtype=source.dtype))  # x_T
        timesteps = ddim_timesteps(setting.steps)
        for i in range(meter.runs(setting.steps)):
            t_now, t_next = timesteps[i], (timesteps[i + 1] if i + 1 < len(timesteps) else -1)
            with meter.stage("denoiser", repeat=setting.steps):
                t = torch.full((batch,), float(t_now), device=source.device)
                eps = self._eps(x, pose, t, cond, null, setting)
                a_t, a_next = self._alpha_bar(t_now), self._alpha_bar(t_next)
                x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)  # predicted x_0
                x = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps  # x_{t_next}, eta = 0
        return x.clamp(-1, 1)

    def flop_checks(self, device="meta") -> dict[str, float]:
        """TFLOP of one denoiser forward and one texture-encoder forward at 256x256, batch 1, for this size
        (networks built on ``device``; keep "meta" so attention is counted)."""
        if next(self.parameters()).device.type == torch.device(device).type:
            encoder, denoiser = self.texture_encoder, self.denoiser
        else:
            with torch.device(device):
                encoder, denoiser = TextureEncoder(self.config), PIDMUNet(self.config)
        cfg = self.config
        source = torch.zeros(1, cfg.texture_in_channels, 256, 256, device=device)
        x = torch.zeros(1, cfg.in_channels, 256, 256, device=device)  # cat(x_t, pose)
        t = torch.zeros(1, device=device)
        with torch.no_grad():
            features = encoder(source)
        return {"denoiser_256": count_flops(denoiser, x, t, features) / 1e12,
                "texture_encoder_256": count_flops(encoder, source) / 1e12}

