"""PoCoLD (Han et al., "Controllable Person Image Synthesis with Pose-Constrained Latent Diffusion", ICCV 2023).

Architecture-faithful re-implementation of PoCoLD *inference*, for timing and FLOP counting; random weights.

Public source followed: ``BrandonHanx/PoCoLD`` @ ``c5c7bb7`` (the only commit, 2023-09-28), files
``src/model.py`` (``UNet2DDoubleAttentionConditionModel``, ``DoubleAttention``, ``DoubleAttn{Down,Up}Block2D``,
``UNetMidBlock2DDoubleAttn``, ``MultiScaleReferenceImageEncoder``, ``ChannelMapper``), ``src/pipeline.py``
(``PoseTransferPipeline.__call__``, ``cfg_type="cat_ref"``), ``inference.py`` (512x384, 50 steps, guidance 5/5 with
``cfg_decay`` to ``end_cfg=3``, fp16), ``train.py`` + ``run.sh`` (``--from_scratch``: ``in_channels=4+4``,
``attn_heads_nums=8``, ``ChannelMapper(25, 4)``, default ``MultiScaleReferenceImageEncoder``, VAE
``stabilityai/sd-vae-ft-mse``, scheduler = the SD1.5 pipeline's PNDM) and ``src/transform.py`` (the 25-label DensePose
"I" channel one-hot encoded at latent resolution, not normalised). The code here is rewritten from that behaviour;
ResNet blocks, down/up-samplers, timestep embeddings and the reference encoder's ``DownBlock2D`` are diffusers', as
in the original.

What one generation runs (``cfg_type="cat_ref"``):

* once ("encoders"): VAE encode of the source image (posterior sample x 0.18215) and the multi-scale reference
  encoder on that latent (``use_time_emb=False``: it does not depend on t, so it runs once);
* per PNDM round ("denoiser"; 50 PLMS steps with ``skip_prk_steps`` = 51 rounds), 3 *sequential* UNet calls,
  each at the full batch:
    - null: ``ChannelMapper(z, densepose * 0)``, no reference -> every DoubleAttention is skipped;
    - cat:  ``ChannelMapper(z, densepose)``, no reference -> every DoubleAttention is skipped;
    - all:  ``ChannelMapper(z, densepose)`` + reference features -> 21 DoubleAttention layers;
  ``eps = null + s(t) * (all - cat) + s(t) * (cat - null)`` with ``s(t) = max(5 * t / 1000, 3)``;
* once ("vae_decode"): VAE decode of latents / 0.18215.

Quirks of the original kept here on purpose: ``DoubleAttention`` overwrites its ``dim_head ** -0.5`` scale with a
learned scalar ``nn.Parameter`` (init 1) that scales both the attention logits and the residual; the attention
logits and both softmaxes are computed in fp32 (``upcast_attention/upcast_softmax``), the probabilities are cast back
to the model dtype before the HW x HW_ref product is materialised per head; ``skip_if_none=True`` skips the attention
layers entirely (not even the residual scale) when no reference is given. The DensePose constraint-map penalty is
training-only and is left out. DensePose extraction itself (Detectron2) is not part of this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, PNDMScheduler
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.unets.unet_2d_blocks import DownBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

from ..meter import Meter, count_flops
from .base import Method, MethodInfo, Setting

__all__ = ["PoCoLD", "PoCoLDConfig", "PoCoLDUNet", "DoubleAttention", "ReferenceEncoder", "ChannelMapper"]

VAE_SCALE = 0.18215  # SD latent scaling (pipeline.decode_latents / train.py)

# SD1.5 ``scheduler/scheduler_config.json``: the pipeline is saved from the SD1.5 one, inference.py passes no scheduler
SD15_PNDM = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    skip_prk_steps=True,
    steps_offset=1,
    set_alpha_to_one=False,
)


@dataclass(frozen=True)
class PoCoLDConfig:
    """Network widths. ``full`` is the released configuration; ``reduced`` a CPU-friendly one, same structure."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)  # UNet levels (latent /1, /2, /4, /8)
    cross_attention_channels: tuple[int, ...] = (128, 256, 512, 512)  # reference-encoder widths per level
    layers_per_block: int = 2  # down blocks; up blocks use layers_per_block + 1
    num_filters: int = 64  # low-rank extraction / distribution filters per DoubleAttention
    heads: int = 8
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    latent_channels: int = 4
    densepose_channels: int = 25  # one-hot DensePose "I" labels (24 parts + background)
    pose_channels: int = 4  # ChannelMapper 25 -> 4, concatenated to the noisy latent (UNet in_channels 4 + 4)
    vae_block_out_channels: tuple[int, ...] = (128, 256, 512, 512)  # sd-vae-ft-mse


CONFIGS = {
    "full": PoCoLDConfig(),
    # ~0.5x width everywhere (UNet, reference encoder, VAE), half the filters; same blocks, heads and depths
    "reduced": PoCoLDConfig(
        block_out_channels=(64, 128, 256, 256),
        cross_attention_channels=(64, 128, 256, 256),
        num_filters=32,
        vae_block_out_channels=(64, 128, 256, 256),
    ),
}


# --------------------------------------------------------------------------------------------------------------------
# Networks (src/model.py)
# --------------------------------------------------------------------------------------------------------------------


class ChannelMapper(nn.Module):
    """1x1 conv of the DensePose one-hot map, concatenated to the latent: (B,4,h,w),(B,25,h,w) -> (B,8,h,w)."""

    def __init__(self, in_channels: int = 25, out_channels: int = 4):
        super().__init__()
        self.cond_conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, latents: torch.Tensor, densepose: torch.Tensor) -> torch.Tensor:
        return torch.cat([latents, self.cond_conv(densepose)], dim=1)


class DoubleAttention(nn.Module):
    """PoCoLD's "pose-constrained" low-rank cross-attention from the UNet feature map to a reference feature map.

    Per head (d = dim_head, k = num_filters, N = H*W query tokens, M = H_ref*W_ref reference tokens):
    ``S = softmax_M(E K^T)`` (k, M) with learned extraction filters E (k, d); ``C = softmax_k(D Q^T)`` (k, N) with
    learned distribution filters D (k, d); ``A = C^T S`` (N, M) is materialised; ``out = A V`` (N, d).
    Output: ``to_out(out) + x * scale`` where ``scale`` is a learned scalar (it also multiplies the logits).
    """

    def __init__(self, query_dim: int, context_dim: int, num_filters: int, heads: int = 8, eps: float = 1e-5):
        super().__init__()
        inner_dim = query_dim  # dim_head = query_dim // heads
        self.heads = heads
        self.norm = nn.LayerNorm(context_dim, eps=eps)
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Linear(inner_dim, query_dim)
        self.extraction_filters = nn.Parameter(torch.randn(num_filters, inner_dim))
        self.distribution_filters = nn.Parameter(torch.randn(num_filters, inner_dim))
        self.scale = nn.Parameter(torch.ones(1))  # replaces dim_head ** -0.5 in the original

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, h*d) -> (B*h, L, d)."""
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2).reshape(b * self.heads, n, -1)

    def _probs(self, filters: torch.Tensor, tokens: torch.Tensor, dim: int) -> torch.Tensor:
        """softmax(filters @ tokens^T * scale) in fp32, cast back to the input dtype.

        (B*h, k, d), (B*h, L, d) -> (B*h, k, L)
        """
        dtype = filters.dtype
        scores = torch.bmm(filters.float(), tokens.float().transpose(1, 2)) * self.scale.float()
        return scores.softmax(dim=dim).to(dtype)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q_tokens = x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, N, C)
        ctx = context.permute(0, 2, 3, 1).reshape(b, -1, context.shape[1])  # (B, M, C_ref)
        ctx = self.norm(ctx)

        q = self._heads(self.to_q(q_tokens))  # (B*h, N, d)
        k = self._heads(self.to_k(ctx))  # (B*h, M, d)
        v = self._heads(self.to_v(ctx))  # (B*h, M, d)
        ext = self._heads(self.extraction_filters.expand(b, -1, -1))  # (B*h, k, d)
        dis = self._heads(self.distribution_filters.expand(b, -1, -1))  # (B*h, k, d)

        spatial = self._probs(ext, k, dim=-1)  # (B*h, k, M): softmax over reference positions
        channel = self._probs(dis, q, dim=1)  # (B*h, k, N): softmax over the k filters
        attn = torch.bmm(channel.transpose(1, 2), spatial)  # (B*h, N, M): full matrix, per head
        out = torch.bmm(attn, v)  # (B*h, N, d)

        out = out.reshape(b, self.heads, h * w, -1).transpose(1, 2).reshape(b, h * w, c)  # (B, N, C)
        out = self.to_out(out).reshape(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W)
        return out + x * self.scale


def _resnet(cin: int, cout: int, temb: int | None, cfg: PoCoLDConfig) -> ResnetBlock2D:
    return ResnetBlock2D(
        in_channels=cin, out_channels=cout, temb_channels=temb, eps=cfg.norm_eps, groups=cfg.norm_num_groups,
        non_linearity="silu",
    )


class _DoubleAttnDown(nn.Module):
    """``layers`` x (ResnetBlock2D -> DoubleAttention), then an optional strided-conv Downsample2D."""

    def __init__(self, cin: int, cout: int, ctx: int, temb: int, layers: int, downsample: bool, cfg: PoCoLDConfig):
        super().__init__()
        self.resnets = nn.ModuleList(_resnet(cin if i == 0 else cout, cout, temb, cfg) for i in range(layers))
        self.attentions = nn.ModuleList(
            DoubleAttention(cout, ctx, cfg.num_filters, cfg.heads, cfg.norm_eps) for _ in range(layers)
        )
        self.downsamplers = (
            nn.ModuleList([Downsample2D(cout, use_conv=True, out_channels=cout, padding=1, name="op")])
            if downsample
            else None
        )

    def forward(self, x, temb, context):
        skips = ()
        for resnet, attn in zip(self.resnets, self.attentions):
            x = resnet(x, temb)
            if context is not None:  # skip_if_none=True
                x = attn(x, context)
            skips += (x,)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips += (x,)
        return x, skips


class _DoubleAttnUp(nn.Module):
    """``layers`` x (concat skip -> ResnetBlock2D -> DoubleAttention), then an optional nearest-2x Upsample2D."""

    def __init__(self, cin: int, cout: int, prev: int, ctx: int, temb: int, layers: int, upsample: bool,
                 cfg: PoCoLDConfig):
        super().__init__()
        self.resnets = nn.ModuleList(
            _resnet((prev if i == 0 else cout) + (cin if i == layers - 1 else cout), cout, temb, cfg)
            for i in range(layers)
        )
        self.attentions = nn.ModuleList(
            DoubleAttention(cout, ctx, cfg.num_filters, cfg.heads, cfg.norm_eps) for _ in range(layers)
        )
        self.upsamplers = nn.ModuleList([Upsample2D(cout, use_conv=True, out_channels=cout)]) if upsample else None

    def forward(self, x, skips, temb, context, upsample_size=None):
        for resnet, attn in zip(self.resnets, self.attentions):
            x = resnet(torch.cat([x, skips[-1]], dim=1), temb)
            skips = skips[:-1]
            if context is not None:
                x = attn(x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class _DoubleAttnMid(nn.Module):
    """ResnetBlock2D -> DoubleAttention -> ResnetBlock2D at the lowest resolution."""

    def __init__(self, ch: int, ctx: int, temb: int, cfg: PoCoLDConfig):
        super().__init__()
        self.resnets = nn.ModuleList([_resnet(ch, ch, temb, cfg), _resnet(ch, ch, temb, cfg)])
        self.attentions = nn.ModuleList([DoubleAttention(ch, ctx, cfg.num_filters, cfg.heads, cfg.norm_eps)])

    def forward(self, x, temb, context):
        x = self.resnets[0](x, temb)
        if context is not None:
            x = self.attentions[0](x, context)
        return self.resnets[1](x, temb)


class PoCoLDUNet(nn.Module):
    """``UNet2DDoubleAttentionConditionModel`` (from-scratch config): eps prediction on the 8-channel input.

    ``forward(sample (B,8,h,w), timestep, encoder_hidden_states)`` where ``encoder_hidden_states`` is the list of
    4 reference feature maps (one per level, (B, C_ref_i, h/2^i, w/2^i)) or ``None`` (all attention skipped).
    """

    def __init__(self, cfg: PoCoLDConfig):
        super().__init__()
        ch, ctx = cfg.block_out_channels, cfg.cross_attention_channels
        n = len(ch)
        temb = ch[0] * 4
        self.conv_in = nn.Conv2d(cfg.latent_channels + cfg.pose_channels, ch[0], 3, padding=1)
        self.time_proj = Timesteps(ch[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(ch[0], temb)

        self.down_blocks = nn.ModuleList(
            _DoubleAttnDown(ch[max(i - 1, 0)], ch[i], ctx[i], temb, cfg.layers_per_block, i < n - 1, cfg)
            for i in range(n)
        )
        self.mid_block = _DoubleAttnMid(ch[-1], ctx[-1], temb, cfg)
        rch, rctx = ch[::-1], ctx[::-1]
        self.up_blocks = nn.ModuleList(
            _DoubleAttnUp(rch[min(i + 1, n - 1)], rch[i], rch[max(i - 1, 0)], rctx[i], temb, cfg.layers_per_block + 1,
                          i < n - 1, cfg)
            for i in range(n)
        )
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, ch[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(ch[0], cfg.latent_channels, 3, padding=1)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: list[torch.Tensor] | None = None):
        b = sample.shape[0]
        # spatial sizes not divisible by 2^(levels-1) (e.g. a 16x12 latent): up-sample to the skip's size
        forward_upsample_size = any(s % 2 ** (len(self.up_blocks) - 1) for s in sample.shape[-2:])

        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(-1).expand(b)
        emb = self.time_embedding(self.time_proj(t).to(self.conv_in.weight.dtype))  # (B, 4*C0)

        context = encoder_hidden_states if encoder_hidden_states is not None else [None] * len(self.down_blocks)
        x = self.conv_in(sample)  # (B, C0, h, w)
        skips = (x,)
        for block, ctx in zip(self.down_blocks, context):
            x, res = block(x, emb, ctx)
            skips += res
        x = self.mid_block(x, emb, context[-1])
        for i, (block, ctx) in enumerate(zip(self.up_blocks, context[::-1])):
            res, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
            size = skips[-1].shape[2:] if forward_upsample_size and i < len(self.up_blocks) - 1 else None
            x = block(x, res, emb, ctx, size)
        return self.conv_out(F.silu(self.conv_norm_out(x)))  # (B, 4, h, w)


class ReferenceEncoder(nn.Module):
    """``MultiScaleReferenceImageEncoder`` (``use_time_emb=False``): source latent -> one feature map per UNet level.

    conv_in, then 4 diffusers ``DownBlock2D`` (1 resnet each, no time embedding); blocks 1..3 end with a
    down-sampler, so outputs are (B,C0,h,w), (B,C1,h/2,w/2), (B,C2,h/4,w/4), (B,C3,h/8,w/8).
    """

    def __init__(self, cfg: PoCoLDConfig):
        super().__init__()
        ch = cfg.cross_attention_channels
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownBlock2D(
                in_channels=ch[max(i - 1, 0)], out_channels=ch[i], temb_channels=None, num_layers=1,
                resnet_eps=cfg.norm_eps, resnet_act_fn="silu", resnet_groups=32, add_downsample=i > 0,
                downsample_padding=1,
            )
            for i in range(len(ch))
        )

    def forward(self, latent: torch.Tensor) -> list[torch.Tensor]:
        x = self.conv_in(latent)
        feats = []
        for block in self.down_blocks:
            x, _ = block(x, None)
            feats.append(x)
        return feats


def build_vae(cfg: PoCoLDConfig) -> AutoencoderKL:
    """SD VAE with the ``stabilityai/sd-vae-ft-mse`` architecture (reduced: narrower blocks)."""
    n = len(cfg.vae_block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=cfg.vae_block_out_channels, layers_per_block=2,
        act_fn="silu", latent_channels=cfg.latent_channels, norm_num_groups=32, sample_size=256,
        scaling_factor=VAE_SCALE,
    )


# --------------------------------------------------------------------------------------------------------------------
# Method (src/pipeline.py PoseTransferPipeline, inference.py)
# --------------------------------------------------------------------------------------------------------------------


def _randn(shape, generator, device, dtype) -> torch.Tensor:
    """Noise from the CPU ``generator`` when given (moved to ``device``), else drawn on ``device``."""
    if generator is not None:
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device, dtype)
    return torch.randn(shape, device=device, dtype=dtype)


def pndm_rounds(steps: int) -> int:
    """UNet rounds of SD1.5's PNDM (PLMS, ``skip_prk_steps``) for ``steps`` inference steps (50 -> 51)."""
    scheduler = PNDMScheduler(**SD15_PNDM)
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)


class PoCoLD(Method):
    """PoCoLD inference: VAE + multi-scale reference encoder once, 3 sequential UNet calls per PNDM round, decode.

    ``size="full"`` is the released configuration (UNet 109.0 M, reference encoder 14.9 M, sd-vae-ft-mse 83.7 M);
    ``size="reduced"`` halves every width (UNet/reference encoder/VAE blocks 64,128,256,256; 32 filters; 8 heads,
    same depths) for quick CPU runs. Build on the meta device (``with torch.device("meta"): PoCoLD()``) for
    parameter and FLOP counts.
    """

    info = MethodInfo(
        name="PoCoLD",
        paper="Han et al., Controllable Person Image Synthesis with Pose-Constrained Latent Diffusion, ICCV 2023",
        source="github.com/BrandonHanx/PoCoLD@c5c7bb7 (src/model.py, src/pipeline.py, inference.py, train.py, run.sh)",
        released=Setting(
            name="as_released",
            resolution=(512, 384),  # 64x48 latent
            steps=50,  # PNDM/PLMS with skip_prk_steps: 51 UNet rounds
            evals_per_step=3,
            batched_cfg=False,
            precision="fp16",  # attention logits / softmax upcast to fp32
            scheduler="pndm",
            notes="3 sequential UNet calls per round (null: DensePose zeroed, no reference; cat: DensePose, no "
            "reference; all: DensePose + reference); the first two skip every DoubleAttention. Guidance "
            "max(5*t/1000, 3) for both terms (cfg_decay, end_cfg=3). DensePose extraction not included.",
        ),
        expected_params={"unet": 109.0, "reference_encoder": 14.9},
        expected_tflops={"unet_64x48": 0.123, "unet_64x48_no_context": 0.050, "reference_encoder_64x48": 0.017},
    )

    guidance_scale = 5.0  # ref_guidance_scale = cat_guidance_scale = 5 (inference.py)
    end_cfg = 3.0  # cfg_decay floor

    def __init__(self, size: str = "full"):
        super().__init__()
        if size not in CONFIGS:
            raise ValueError(f"size must be one of {sorted(CONFIGS)}, got {size!r}")
        self.size = size
        self.cfg = CONFIGS[size]
        self.channel_mapper = ChannelMapper(self.cfg.densepose_channels, self.cfg.pose_channels)
        self.unet = PoCoLDUNet(self.cfg)
        self.reference_encoder = ReferenceEncoder(self.cfg)
        self.vae = build_vae(self.cfg)

    def param_groups(self) -> dict[str, nn.Module]:
        return {
            "unet": self.unet,
            "reference_encoder": self.reference_encoder,
            "channel_mapper": self.channel_mapper,  # 104 parameters
            "vae": self.vae,
        }

    def example_inputs(self, batch: int, setting: Setting, device, dtype, generator=None) -> dict:
        """``source``: (B,3,H,W) image in [-1,1]; ``densepose``: (B,25,H/8,W/8) one-hot DensePose labels (0/1)."""
        height, width = setting.resolution
        h, w = height // 8, width // 8
        if generator is not None:
            source = torch.rand(batch, 3, height, width, generator=generator) * 2 - 1
            labels = torch.randint(0, self.cfg.densepose_channels, (batch, 1, h, w), generator=generator)
            source, labels = source.to(device, dtype), labels.to(device)
        else:
            source = torch.rand(batch, 3, height, width, device=device, dtype=dtype) * 2 - 1
            labels = torch.randint(0, self.cfg.densepose_channels, (batch, 1, h, w), device=device)
        densepose = torch.zeros(batch, self.cfg.densepose_channels, h, w, device=device, dtype=dtype)
        densepose.scatter_(1, labels, 1.0)  # one-hot along channels
        return {"source": source, "densepose": densepose}

    @classmethod
    def guidance(cls, t) -> float:
        """cfg_decay: ``max(5 * t / 1000, 3)`` (same scale for the reference and the DensePose terms)."""
        return max(cls.guidance_scale * float(t) / 1000, cls.end_cfg)

    @torch.no_grad()
    def generate(self, inputs: dict, setting: Setting, meter: Meter, generator=None) -> torch.Tensor:
        """Returns images (B, 3, H, W) in [0, 1] (``decode_latents``: ``(x / 2 + 0.5).clamp(0, 1)``), float32."""
        weight = self.unet.conv_in.weight
        device, dtype = weight.device, weight.dtype
        source = inputs["source"].to(device, dtype)  # (B, 3, H, W)
        densepose = inputs["densepose"].to(device, dtype)  # (B, 25, h, w)
        b, _, height, width = source.shape
        shape = (b, self.cfg.latent_channels, height // 8, width // 8)
        if tuple(densepose.shape[2:]) != shape[2:]:
            raise ValueError(f"densepose must be at latent resolution {shape[2:]}, got {tuple(densepose.shape[2:])}")

        with meter.stage("encoders"):
            posterior = self.vae.encode(source).latent_dist
            ref = (posterior.mean + posterior.std * _randn(shape, generator, device, dtype)) * VAE_SCALE  # (B,4,h,w)
            ref_feats = self.reference_encoder(ref)  # 4 maps, (B, C_i, h/2^i, w/2^i)

        scheduler = PNDMScheduler(**SD15_PNDM)
        scheduler.set_timesteps(setting.steps)
        timesteps = scheduler.timesteps  # 51 for 50 steps: 981, 961, 961, 941, ..., 1 (CPU int64)
        rounds = len(timesteps)
        latents = _randn(shape, generator, device, dtype)  # (B, 4, h, w); PNDM init_noise_sigma = 1

        for t in timesteps[: meter.runs(rounds)]:
            with meter.stage("denoiser", repeat=rounds):
                x_cat = self.channel_mapper(latents, densepose)  # (B, 8, h, w)
                x_null = self.channel_mapper(latents, densepose * 0.0)
                eps_null = self.unet(x_null, t, None)
                eps_cat = self.unet(x_cat, t, None)
                eps_all = self.unet(x_cat, t, ref_feats)
                s_ref = s_cat = self.guidance(t)
                eps = eps_null + s_ref * (eps_all - eps_cat) + s_cat * (eps_cat - eps_null)
                latents = scheduler.step(eps, t, latents).prev_sample

        with meter.stage("vae_decode"):
            image = self.vae.decode(latents / VAE_SCALE).sample
            image = (image / 2 + 0.5).clamp(0, 1).float()
        return image

    def flop_checks(self, device="meta") -> dict[str, float]:
        """TFLOPs of one UNet call with / without the reference and of the reference encoder at a 64x48 latent."""
        cfg = self.cfg
        model = self
        if _device_of(self) != torch.device(device):
            with torch.device(device):
                model = PoCoLD(self.size)
        dtype = model.unet.conv_in.weight.dtype
        sample = torch.randn(1, cfg.latent_channels + cfg.pose_channels, 64, 48, device=device, dtype=dtype)
        latent = torch.randn(1, cfg.latent_channels, 64, 48, device=device, dtype=dtype)
        t = torch.tensor(981)
        with torch.no_grad():
            feats = model.reference_encoder(latent)
        return {
            "unet_64x48": count_flops(model.unet, sample, t, feats) / 1e12,
            "unet_64x48_no_context": count_flops(model.unet, sample, t, None) / 1e12,
            "reference_encoder_64x48": count_flops(model.reference_encoder, latent) / 1e12,
        }


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
