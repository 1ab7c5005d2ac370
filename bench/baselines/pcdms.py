"""PCDMs (ICLR 2024, "Advancing Pose-Guided Image Synthesis with Progressive Conditional Diffusion Models"):
architecture-faithful re-implementation of its three-stage inference for the benchmark suite.

Public source: https://github.com/tencent-ailab/PCDMs @ b3a46fb (diffusers 0.24 era). Behaviour follows
``src/models/stage1_prior_transformer.py``, ``src/models/stage2_inpaint_unet_2d_condition.py``,
``src/pipelines/stage{1_prior,2_inpaint,3_refined}_pipeline.py``, ``stage{1,2,3}_batchtest_*.py`` and
``run_test_stage*.sh``; the networks are built here from diffusers/transformers blocks with random weights
(no code copied). Per generated image, as released:

- encoders: OpenCLIP ViT-H/14 image embedding of the source (stage 1), DINOv2-giant tokens of the source at
  224x224 (the scripts feed DINOv2 the ``CLIPImageProcessor`` crop) through ``ImageProjModel_p``
  (1536 -> 768 -> 1024, stages 2 and 3), and the ControlNet-style pose embedding of the 512x1024
  [source pose | target pose] canvas (stage 2).
- stage 1: a 6-token prior transformer (diffusers ``PriorTransformer`` + two pose MLPs) predicts the target's CLIP
  image embedding; ``UnCLIPScheduler`` (Kandinsky-2.2 prior config), 20 steps, guidance 0, i.e. 1 evaluation/step.
- stage 2: SD2.1-base UNet, 9 input channels (noise | mask | masked-canvas latent), class embedding = the stage-1
  embedding, context = 257 DINOv2 tokens + the stage-1 embedding; the pose embedding is added to ``conv_in``'s
  output. 512x1024 canvas [source | black], UniPC 20 steps, guidance 2.0 batched (zeros as the null condition for
  the tokens and the class embedding), 4 candidates (UNet batch 8), best SSIM against the ground truth kept.
- stage 3: SD2.1-base UNet, 8 input channels (noise | VAE latent of the stage-2 target half), context = the 257
  DINOv2 tokens; 512x512, UniPC 20 steps, guidance 2.0 batched (null = zero tokens and zero latent), with the
  released ``guidance_rescale=2.0`` quirk; 4 candidates, best SSIM kept.

Deviations from the public code (each is also noted where it happens):
- DINOv2 runs once and feeds stages 2 and 3 (the two released scripts each encode the same 224x224 source crop).
- Stage 3 repeats its conditions per candidate; the released pipeline only does so without CFG, so its CFG path
  with ``num_images_per_prompt=4`` fails on a batch mismatch.
- The Kandinsky prior pipeline's ``get_zero_embed`` (a ViT-bigG/14 pass on a zero image whose result is
  discarded) is skipped unless ``zero_embed=True``.
- Candidate selection uses the same Gaussian-window SSIM (sigma 1.2, 9x9, border cropped) on the [0, 1] tensors
  instead of skimage on 8-bit PIL images, with data range 1 where the scripts pass each candidate's own
  max - min; stage 2's output is clamped rather than written to PNG and read back.
- Precision: modules run in whatever dtype they have; :meth:`PCDMs.released_precision` applies the released mix
  (stage-2 UNet and VAE fp16; prior, CLIP, DINOv2, projections, pose embedding and stage-3 UNet fp32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, PriorTransformer, UnCLIPScheduler, UNet2DConditionModel, UniPCMultistepScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model

from ..meter import Meter, count_flops
from .base import Method, MethodInfo, Setting

GUIDANCE_SCALE = 2.0  # stages 2 and 3 (`--guidance_scale` default); stage 1 uses 0, i.e. no CFG
STAGE3_GUIDANCE_RESCALE = 2.0  # stage-3 script passes guidance_rescale=args.guidance_scale
CLIP_MEAN, CLIP_STD = -0.016, 0.415  # Stage1_PriorTransformer.post_process_latents constants
OPENAI_CLIP_PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIPImageProcessor defaults
OPENAI_CLIP_PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)
NUM_KEYPOINTS = 18  # OpenPose body joints, (x, y) normalised, from the `normalized_pose_txt` files
SSIM_SIGMA, SSIM_WINDOW = 1.2, 9  # the candidate selection's skimage SSIM: sigma 1.2, truncate 3.5 -> 9x9

# stabilityai/stable-diffusion-2-1-base unet/config.json (attention_head_dim = heads per level, 64 channels each)
SD21_BASE_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True, norm_num_groups=32,
    norm_eps=1e-5, act_fn="silu", center_input_sample=False, downsample_padding=1, flip_sin_to_cos=True,
    freq_shift=0, mid_block_scale_factor=1, upcast_attention=False)
# stabilityai/stable-diffusion-2-1-base vae/config.json
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    act_fn="silu", sample_size=768, scaling_factor=0.18215)
# stabilityai/stable-diffusion-2-1-base scheduler config, read by UniPCMultistepScheduler.from_config. diffusers
# 0.24 (the README's pin) ended UniPC at sigma(t=0), which is final_sigmas_type="sigma_min" in diffusers 0.42.
SD21_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", trained_betas=None,
    prediction_type="epsilon", steps_offset=1, final_sigmas_type="sigma_min")
# kandinsky-community/kandinsky-2-2-prior scheduler config
KANDINSKY_PRIOR_SCHEDULER = dict(
    num_train_timesteps=1000, variance_type="fixed_small_log", clip_sample=True, clip_sample_range=10.0,
    prediction_type="sample")


@dataclass(frozen=True)
class PCDMsConfig:
    """Network sizes. ``embed_dim`` is the CLIP image-embedding width, shared by the prior's embedding, the
    DINOv2 projection's output, the UNets' cross-attention and the stage-2 class-embedding input."""

    embed_dim: int
    prior: dict  # PriorTransformer kwargs (besides embedding_dim)
    clip: dict  # CLIPVisionConfig kwargs, OpenCLIP ViT-H/14 (image_size = the preprocessing crop for CLIP and DINO)
    dinov2: dict  # Dinov2Config kwargs, DINOv2-giant
    unet: dict  # overrides of SD21_BASE_UNET
    vae: dict  # overrides of SD_VAE
    zero_clip: dict  # CLIPVisionConfig kwargs, ViT-bigG/14 of the Kandinsky-2.2 prior pipeline (zero_embed=True)


CONFIGS = {
    "full": PCDMsConfig(
        embed_dim=1024,
        prior=dict(num_attention_heads=32, attention_head_dim=64, num_layers=20),
        clip=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                  patch_size=14, image_size=224, hidden_act="gelu", layer_norm_eps=1e-5),
        dinov2=dict(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, mlp_ratio=4, use_swiglu_ffn=True,
                    image_size=518, patch_size=14, layerscale_value=1.0),
        unet={}, vae={},
        zero_clip=dict(hidden_size=1664, intermediate_size=8192, num_hidden_layers=48, num_attention_heads=16,
                       patch_size=14, image_size=224, projection_dim=1280, hidden_act="gelu", layer_norm_eps=1e-5)),
    # CPU-friendly: UNets at 0.4x width (128/256/512/512, 64-ch heads, GroupNorm 32 divides every width), small
    # prior (4 layers, 8x64), CLIP (4 layers, 256), DINOv2 (4 layers, 384, swiglu) at 56x56 crops, VAE 0.5x.
    "reduced": PCDMsConfig(
        embed_dim=384,
        prior=dict(num_attention_heads=8, attention_head_dim=64, num_layers=4),
        clip=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                  patch_size=14, image_size=56, hidden_act="gelu", layer_norm_eps=1e-5),
        dinov2=dict(hidden_size=384, num_hidden_layers=4, num_attention_heads=6, mlp_ratio=4, use_swiglu_ffn=True,
                    image_size=56, patch_size=14, layerscale_value=1.0),
        unet=dict(block_out_channels=(128, 256, 512, 512), attention_head_dim=(2, 4, 8, 8)),
        vae=dict(block_out_channels=(64, 128, 256, 256)),
        zero_clip=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
                       patch_size=14, image_size=56, projection_dim=384, hidden_act="gelu", layer_norm_eps=1e-5)),
}


class MLP(nn.Module):
    """Stage-1 pose MLP and ``ImageProjModel_p``: Linear-GELU-LayerNorm-Linear(-LayerNorm). The dropouts (p=0 as
    released) are kept so that the ``net.<i>`` indices match the released checkpoints."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, out_norm: bool):
        super().__init__()
        layers = [nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(0.0), nn.LayerNorm(hidden_dim),
                  nn.Linear(hidden_dim, out_dim), nn.Dropout(0.0)]
        self.net = nn.Sequential(*layers, *([nn.LayerNorm(out_dim)] if out_norm else []))

    def forward(self, x):
        return self.net(x)


class PosePrior(PriorTransformer):
    """Stage 1 (``Stage1_PriorTransformer``): the unCLIP prior with two pose tokens.

    Tokens: [source pose, target pose, source CLIP image embedding, time, noisy target embedding, prd]; each pose
    is 18x2 keypoints -> MLP(36 -> D/2 -> D) (36 -> 512 -> 1024 as released) -> Linear(D -> inner). No attention
    mask (the pipeline passes ``attention_mask=None``, so the causal mask is not applied). The prediction is x_0
    (``prediction_type="sample"``).
    """

    @register_to_config
    def __init__(self, num_attention_heads: int = 32, attention_head_dim: int = 64, num_layers: int = 20,
                 embedding_dim: int = 1024, num_embeddings: int = 2, additional_embeddings: int = 4):
        super().__init__(num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim,
                         num_layers=num_layers, embedding_dim=embedding_dim, num_embeddings=num_embeddings,
                         additional_embeddings=additional_embeddings)
        inner_dim = num_attention_heads * attention_head_dim
        pose_dim = 2 * NUM_KEYPOINTS
        self.pose_encoder = MLP(pose_dim, embedding_dim // 2, embedding_dim, out_norm=True)  # source pose
        self.pose_encoder1 = MLP(pose_dim, embedding_dim // 2, embedding_dim, out_norm=True)  # target pose
        self.encoder_hidden_states_proj1 = nn.Linear(embedding_dim, inner_dim)
        del self.clip_mean, self.clip_std  # the fork de-normalises with constants (CLIP_MEAN, CLIP_STD)

    def forward(self, noisy_embed, timestep, source_embed, source_pose, target_pose):
        """noisy_embed, source_embed: (B, D); timestep: scalar tensor; source_pose, target_pose: (B, 36).
        Returns the predicted clean (normalised) target embedding, (B, D)."""
        batch = noisy_embed.shape[0]
        timesteps = timestep.reshape(-1).to(noisy_embed.device).expand(batch)
        time_embed = self.time_embedding(self.time_proj(timesteps).to(noisy_embed.dtype))  # (B, C)
        tokens = torch.stack([
            self.encoder_hidden_states_proj(self.pose_encoder(source_pose)),
            self.encoder_hidden_states_proj1(self.pose_encoder1(target_pose)),
            self.embedding_proj(source_embed),
            time_embed,
            self.proj_in(noisy_embed),
            self.prd_embedding[:, 0].expand(batch, -1),
        ], dim=1) + self.positional_embedding  # (B, 6, C), C = heads * head_dim
        for block in self.transformer_blocks:
            tokens = block(tokens)
        return self.proj_to_clip_embeddings(self.norm_out(tokens[:, -1]))  # prd token -> (B, D)


class PoseInpaintUNet(UNet2DConditionModel):
    """Stage 2 (``Stage2_InapintUNet2DConditionModel``): the SD UNet with ``pose_features`` added to the output of
    ``conv_in`` (released: ``sample = self.conv_in(sample) + my_pose_cond``). Added with a forward hook held only
    for the duration of the call."""

    def forward(self, sample, timestep, encoder_hidden_states, *, pose_features, **kwargs):
        """sample: (N, 9, h, w); pose_features: (N, C0, h, w) from the pose embedding; class_labels: (N, D)."""
        hook = self.conv_in.register_forward_hook(lambda _module, _args, output: output + pose_features)
        try:
            return super().forward(sample, timestep, encoder_hidden_states, **kwargs)
        finally:
            hook.remove()


def _dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _randn(shape, device, dtype, generator):
    """Noise from the CPU ``generator`` when given (then moved), else drawn on ``device``."""
    if generator is not None:
        return torch.randn(shape, generator=generator).to(device, dtype)
    return torch.randn(shape, device=device, dtype=dtype)


def clip_preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """``CLIPImageProcessor`` on tensors: images (B, 3, H, W) in [-1, 1] -> shortest side to ``size`` (bicubic),
    centre crop ``size`` x ``size``, CLIP mean/std normalisation."""
    height, width = images.shape[-2:]
    scale = size / min(height, width)
    resized = F.interpolate((images + 1) / 2, size=(max(size, round(height * scale)), max(size, round(width * scale))),
                            mode="bicubic", antialias=True, align_corners=False)
    top, left = (resized.shape[-2] - size) // 2, (resized.shape[-1] - size) // 2
    crop = resized[..., top:top + size, left:left + size]
    mean = torch.tensor(OPENAI_CLIP_PIXEL_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_PIXEL_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (crop - mean) / std


def ssim(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per image, the released selection's measure: skimage ``structural_similarity(gaussian_weights=True,
    sigma=1.2, use_sample_covariance=False)``, i.e. a 9x9 Gaussian window and the mean over the pixels at least
    4 from the border; data range 1. images, reference (N, 3, H, W) in [0, 1] -> (N,).

    torchmetrics computes the SSIM map; its own mean also covers the border (windows over reflect padding), so
    the border is cropped here, as skimage does."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _, ssim_map = structural_similarity_index_measure(
        images.float(), reference.float(), gaussian_kernel=True, sigma=SSIM_SIGMA, kernel_size=SSIM_WINDOW,
        data_range=1.0, reduction="none", return_full_image=True)
    border = SSIM_WINDOW // 2
    return ssim_map[..., border:-border, border:-border].mean(dim=(1, 2, 3))


def best_candidate(images: torch.Tensor, reference: torch.Tensor | None, candidates: int) -> torch.Tensor:
    """images (B * n, 3, H, W) grouped per sample, reference (B, 3, H, W), both in [0, 1] -> (B, 3, H, W): the
    candidate with the highest SSIM against the ground truth (the scripts' ``max(ssim_values)``); the first one
    when no reference is given."""
    grouped = images.unflatten(0, (-1, candidates))  # (B, n, 3, H, W)
    if candidates == 1 or reference is None:
        return grouped[:, 0]
    scores = ssim(images, reference.repeat_interleave(candidates, dim=0)).view(-1, candidates)  # (B, n)
    return grouped[torch.arange(grouped.shape[0], device=images.device), scores.argmax(dim=1)]


def _rescale_guidance(guided, cond, rescale):
    """``rescale_noise_cfg`` (Lin et al. 2023, Sec. 3.4): match the guided prediction's std to the conditional one,
    mixed by ``rescale`` (2.0 in the released stage 3, i.e. an extrapolation)."""
    dims = list(range(1, guided.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return rescale * rescaled + (1 - rescale) * guided


RELEASED = Setting(
    "as_released", resolution=(512, 512), steps=20, evals_per_step=2, batched_cfg=True, precision="fp16",
    scheduler="unipc", candidates=4,
    notes="three stages of 20 steps each. Stage 1: UnCLIPScheduler, no CFG (1 prior eval/step, fp32). Stage 2: "
          "512x1024 [source|target] canvas, UniPC, w=2.0 batched CFG (UNet batch 2 x candidates), fp16. Stage 3: "
          "512x512, UniPC, w=2.0 batched CFG (+guidance_rescale 2.0), UNet fp32. 4 candidates in stages 2 and 3, "
          "best SSIM against the ground truth kept.")


class PCDMs(Method):
    """PCDMs' three-stage inference (prior -> inpainting -> refinement) with random weights.

    Args:
        size: ``"full"`` builds the released architectures (≈4.6 B parameters; build it on the meta device unless
            you have ≈19 GB for fp32). ``"reduced"`` is CPU-sized (:data:`CONFIGS`): same structure, narrower nets.
        candidates: images generated per kept image in stages 2 and 3 (released: 4, best SSIM kept).
        zero_embed: also build and run the ViT-bigG/14 zero-image pass of the Kandinsky prior pipeline
            (``get_zero_embed``, whose result the stage-1 script discards) as stage ``"stage1.zero_embed"``.
    """

    def __init__(self, size: str = "full", candidates: int | None = None, zero_embed: bool = False):
        super().__init__()
        self.config = config = CONFIGS[size]
        released = RELEASED if candidates is None else Setting(**{**RELEASED.__dict__, "candidates": candidates})
        self.info = MethodInfo(
            name="PCDMs", paper="ICLR 2024 (Shen et al., Progressive Conditional Diffusion Models)",
            source="tencent-ailab/PCDMs@b3a46fb", released=released,
            # the released (full-size) networks, baselines.md section 3
            expected_params={"stage2_unet": 868.9, "stage3_unet": 865.9},
            expected_tflops={"stage2_cfg_step": 3.75, "stage3_cfg_step": 1.64})
        dim = config.embed_dim
        self.clip_vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**config.clip, projection_dim=dim)).eval()
        self.dinov2 = Dinov2Model(Dinov2Config(**config.dinov2)).eval()
        dino_width = config.dinov2["hidden_size"]
        self.image_proj = MLP(dino_width, dino_width // 2, dim, out_norm=False)  # ImageProjModel_p(1536, 768, 1024)
        self.prior = PosePrior(embedding_dim=dim, num_embeddings=2, additional_embeddings=4, **config.prior)
        unet_config = {**SD21_BASE_UNET, **config.unet, "cross_attention_dim": dim}
        self.stage2_unet = PoseInpaintUNet(**{**unet_config, "in_channels": 9, "class_embed_type": "projection",
                                              "projection_class_embeddings_input_dim": dim})
        self.stage3_unet = UNet2DConditionModel(**{**unet_config, "in_channels": 8})
        self.pose_embed = ControlNetConditioningEmbedding(unet_config["block_out_channels"][0], 3, (16, 32, 96, 256))
        self.vae = AutoencoderKL(**{**SD_VAE, **config.vae})
        self.zero_clip = (CLIPVisionModelWithProjection(CLIPVisionConfig(**config.zero_clip)).eval()
                          if zero_embed else None)
        with torch.device("cpu"):  # scheduler tables stay on the CPU, also when the networks are built on meta
            self.prior_scheduler = UnCLIPScheduler(**KANDINSKY_PRIOR_SCHEDULER)
            self.scheduler = UniPCMultistepScheduler.from_config(SD21_SCHEDULER)

    @property
    def context_tokens(self) -> int:
        """DINOv2 tokens of the CLIP-processed crop (CLS + patches; 257 at 224x224 / patch 14)."""
        return (self.config.clip["image_size"] // self.config.dinov2["patch_size"]) ** 2 + 1

    def param_groups(self) -> dict[str, nn.Module]:
        groups = {"prior": self.prior, "stage2_unet": self.stage2_unet, "stage3_unet": self.stage3_unet,
                  "dinov2": self.dinov2, "clip_vision": self.clip_vision, "vae": self.vae,
                  "pose_embed": self.pose_embed, "image_proj": self.image_proj}
        if self.zero_clip is not None:
            groups["zero_clip"] = self.zero_clip
        return groups

    def apply_precision(self, setting: Setting) -> None:
        """As released, precisions are mixed (see :meth:`released_precision`); other settings are uniform."""
        if setting.name == "as_released" and setting.precision == "fp16":
            self.released_precision()
        else:
            super().apply_precision(setting)

    def released_precision(self) -> PCDMs:
        """Cast to the released dtypes: stage-2 UNet and VAE fp16 (``torch_dtype=torch.float16`` pipelines);
        everything else fp32 (the prior pipeline, the encoders, projections and pose embedding, and the stage-3
        UNet, which is loaded without ``torch_dtype`` and fed fp32 inputs)."""
        self.float()
        self.stage2_unet.half()
        self.vae.half()
        return self

    def example_inputs(self, batch: int, setting: Setting, device, dtype, generator=None) -> dict:
        """Images (B, 3, H, W) in [-1, 1] at ``setting.resolution``: source, ground-truth target (used only for the
        best-SSIM selection), source and target OpenPose renderings; keypoints (B, 18, 2) in [0, 1]."""
        height, width = setting.resolution

        def rand(*shape):
            if generator is not None:
                return torch.rand(shape, generator=generator).to(device, dtype)
            return torch.rand(shape, device=device, dtype=dtype)

        images = {name: rand(batch, 3, height, width) * 2 - 1
                  for name in ("source_image", "target_image", "source_pose", "target_pose")}
        return {**images, "source_keypoints": rand(batch, NUM_KEYPOINTS, 2),
                "target_keypoints": rand(batch, NUM_KEYPOINTS, 2)}

    @torch.no_grad()
    def generate(self, inputs: dict, setting: Setting, meter: Meter, generator=None) -> torch.Tensor:
        """Run stages 1-3; returns the kept image per sample, (B, 3, H, W) in [0, 1]."""
        source = inputs["source_image"]
        device, batch, width = source.device, source.shape[0], source.shape[-1]  # tile width W
        steps, n = setting.steps, setting.candidates
        target = inputs.get("target_image")
        target = None if target is None else (target.float() + 1) / 2

        with meter.stage("encoders"):
            pixels = clip_preprocess(source.float(), self.config.clip["image_size"])  # (B, 3, S, S)
            source_embed = self.clip_vision(pixels.to(_dtype(self.clip_vision))).image_embeds  # (B, D)
            # DINOv2 tokens -> ImageProjModel_p, shared by stages 2 and 3 (released: encoded again in stage 3)
            dino = self.dinov2(pixels.to(_dtype(self.dinov2))).last_hidden_state  # (B, T, 1536), T = 257
            tokens = self.image_proj(dino.to(_dtype(self.image_proj)))  # (B, T, D)
            pose_canvas = torch.cat([inputs["source_pose"], inputs["target_pose"]], dim=-1)  # (B, 3, H, 2W)
            pose_features = self.pose_embed(pose_canvas.to(_dtype(self.pose_embed)))  # (B, C0, H/8, 2W/8)

        # Stage 1: target CLIP embedding from the source embedding and both poses; no CFG (guidance_scale 0).
        if self.zero_clip is not None:
            with meter.stage("stage1.zero_embed"):
                size = self.zero_clip.config.image_size
                self.zero_clip(torch.zeros(1, 3, size, size, device=device, dtype=_dtype(self.zero_clip)))
        prior_dtype = _dtype(self.prior)
        source_embed = source_embed.to(prior_dtype)
        source_kp = inputs["source_keypoints"].flatten(1).to(prior_dtype)  # (B, 36)
        target_kp = inputs["target_keypoints"].flatten(1).to(prior_dtype)
        scheduler = self.prior_scheduler
        with torch.device("cpu"):
            scheduler.set_timesteps(steps)
        timesteps = scheduler.timesteps
        embed = _randn((batch, self.config.embed_dim), device, prior_dtype, generator) * scheduler.init_noise_sigma
        for i in range(meter.runs(steps)):
            with meter.stage("stage1.denoiser", repeat=steps):
                predicted = self.prior(embed, timesteps[i], source_embed, source_kp, target_kp)  # x_0, (B, D)
                prev = timesteps[i + 1] if i + 1 < len(timesteps) else None
                embed = scheduler.step(predicted, timesteps[i], embed, prev_timestep=prev,
                                       generator=generator).prev_sample
        target_embed = embed * CLIP_STD + CLIP_MEAN  # (B, D)

        # Stage 2: inpaint the target half of [source | black] on the [source pose | target pose] canvas.
        unet, vae = self.stage2_unet, self.vae
        unet_dtype, vae_dtype, scale = _dtype(unet), _dtype(vae), vae.config.scaling_factor
        with meter.stage("stage2.vae_encode"):
            canvas = torch.cat([source, -torch.ones_like(source)], dim=-1)  # (B, 3, H, 2W), black = -1
            masked = vae.encode(canvas.to(vae_dtype)).latent_dist.sample(generator) * scale  # (B, 4, h, 2w)
        latent_h, latent_w = masked.shape[-2:]
        mask = torch.cat([torch.ones(batch, 1, latent_h, latent_w // 2, device=device),
                          torch.zeros(batch, 1, latent_h, latent_w // 2, device=device)], dim=-1)  # 1 = keep
        context = torch.cat([tokens, target_embed[:, None].to(tokens.dtype)], dim=1)  # (B, T + 1, D)
        # per candidate (B * n), then [uncond | cond] (2 * B * n): zero tokens and class embedding for uncond;
        # pose, mask and masked latent are the same in both halves
        context = _with_null(context.repeat_interleave(n, dim=0)).to(unet_dtype)
        class_labels = _with_null(target_embed.repeat_interleave(n, dim=0)).to(unet_dtype)  # (2Bn, D)
        image_cond = torch.cat([mask, masked.to(mask.dtype)], dim=1).repeat_interleave(n, dim=0).repeat(2, 1, 1, 1)
        image_cond = image_cond.to(unet_dtype)  # (2Bn, 5, h, 2w)
        pose_cond = pose_features.repeat_interleave(n, dim=0).repeat(2, 1, 1, 1).to(unet_dtype)  # (2Bn, C0, h, 2w)
        latents = self._denoise(
            "stage2.denoiser", meter, steps, (batch * n, 4, latent_h, latent_w), generator,
            lambda model_input, t: unet(torch.cat([model_input, image_cond], dim=1), t, context,
                                        class_labels=class_labels, pose_features=pose_cond).sample,
            device, unet_dtype, rescale=0.0)
        with meter.stage("stage2.vae_decode"):
            decoded = vae.decode(latents.to(vae_dtype) / scale).sample  # (Bn, 3, H, 2W)
        stage2 = best_candidate(((decoded[..., width:].float() + 1) / 2).clamp(0, 1), target, n)  # (B, 3, H, W)

        # Stage 3: refine the kept stage-2 target at 512x512 with the source's DINOv2 tokens.
        unet = self.stage3_unet
        unet_dtype = _dtype(unet)
        with meter.stage("stage3.vae_encode"):
            coarse = vae.encode((stage2 * 2 - 1).to(vae_dtype)).latent_dist.sample(generator) * scale  # (B, 4, h, w)
        # released: not repeated per candidate under CFG (a batch mismatch for 4 candidates); repeated here
        context = _with_null(tokens.repeat_interleave(n, dim=0)).to(unet_dtype)  # (2Bn, T, D)
        image_cond = _with_null(coarse.repeat_interleave(n, dim=0)).to(unet_dtype)  # (2Bn, 4, h, w), uncond = 0
        latents = self._denoise(
            "stage3.denoiser", meter, steps, (batch * n, 4, *coarse.shape[-2:]), generator,
            lambda model_input, t: unet(torch.cat([model_input, image_cond], dim=1), t, context).sample,
            device, unet_dtype, rescale=STAGE3_GUIDANCE_RESCALE)
        with meter.stage("stage3.vae_decode"):
            decoded = vae.decode(latents.to(vae_dtype) / scale).sample  # (Bn, 3, H, W)
        return best_candidate(((decoded.float() + 1) / 2).clamp(0, 1), target, n)

    def _denoise(self, stage, meter, steps, shape, generator, unet_call, device, dtype, rescale):
        """UniPC loop with batched CFG (w = 2.0): ``unet_call(model_input (2N, 4, h, w), t)`` -> eps (2N, 4, h, w)."""
        scheduler = self.scheduler
        with torch.device("cpu"):
            scheduler.set_timesteps(steps)
        latents = _randn(shape, device, dtype, generator) * scheduler.init_noise_sigma
        for t in scheduler.timesteps[: meter.runs(steps)]:
            with meter.stage(stage, repeat=steps):
                model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
                uncond, cond = unet_call(model_input, t).chunk(2)
                guided = uncond + GUIDANCE_SCALE * (cond - uncond)
                if rescale > 0:
                    guided = _rescale_guidance(guided, cond, rescale)
                latents = scheduler.step(guided, t, latents).prev_sample
        return latents

    def flop_checks(self, device="meta") -> dict[str, float]:
        """TFLOP of one CFG step for one sample: a UNet forward at batch 2 (stage 2: 512x1024 canvas, 64x128
        latent, 258 context tokens; stage 3: 64x64 latent, 257 tokens). The pose embedding is computed once per
        image outside the loop, as released, and is not part of the step."""
        height, width = self.info.released.resolution
        latent_h, latent_w = height // 8, width // 8
        dim, tokens = self.config.embed_dim, self.context_tokens
        t = torch.tensor(999)

        def zeros(module, *shape):
            return torch.zeros(shape, device=device, dtype=_dtype(module))

        stage2 = count_flops(
            self.stage2_unet, zeros(self.stage2_unet, 2, 9, latent_h, 2 * latent_w), t,
            zeros(self.stage2_unet, 2, tokens + 1, dim), class_labels=zeros(self.stage2_unet, 2, dim),
            pose_features=zeros(self.stage2_unet, 2, self.stage2_unet.config.block_out_channels[0], latent_h,
                                2 * latent_w))
        stage3 = count_flops(self.stage3_unet, zeros(self.stage3_unet, 2, 8, latent_h, latent_w), t,
                             zeros(self.stage3_unet, 2, tokens, dim))
        return {"stage2_cfg_step": stage2 / 1e12, "stage3_cfg_step": stage3 / 1e12}


def _with_null(cond: torch.Tensor) -> torch.Tensor:
    """[zeros | cond] along the batch: the released null condition for CFG."""
    return torch.cat([torch.zeros_like(cond), cond])
