"""Verification against tensors produced by the official IMAGPose code (``shared/fixtures/official`` layout).

Three fixture kinds are recognised by their files, whatever their config, seed or tile shape:
    unet      config.json + inputs/outputs[/intermediates].safetensors + official weight files: one UNet
              forward with PoseGuider and PatchEmbedding; every output and every hooked intermediate compared
    pipeline  call_args.json + tensors.safetensors + images/ + vae/ + image_encoder/ + scheduler/: a full
              official pipeline call, re-run through *our* pipeline from the same images and arguments
              (nothing stored is fed back in); every stored tensor compared, plus images/output.png
    manifest  *.keys.json: full-size state-dict keys and shapes, compared with our models built on "meta"
Official weights always go through :mod:`imagpose.convert`. Tolerances are the fixture README's: float
tensors ``|a - e| <= atol + rtol |e|`` with rtol = atol = 1e-4, uint8 images within 1 level, ints exact.
A fixture with a missing or unreadable part raises :class:`~imagpose.errors.InputFileError` naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import InputFileError
from .io import load_state_dict_file, read_json

FLOAT_RTOL = 1e-4
FLOAT_ATOL = 1e-4
PNG_LEVELS = 1


@dataclass
class Check:
    name: str
    passed: bool
    max_abs: float | None = None
    max_rel: float | None = None  # max |a - e| / max |e|
    detail: str = ""


@dataclass
class VerifyReport:
    fixture: str
    kind: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def format(self) -> str:
        width = max([len(c.name) for c in self.checks] + [20])
        lines = [f"== {self.fixture} ({self.kind})", f"{'check':<{width}}  {'max abs':>10}  {'max rel':>10}  result"]
        for c in self.checks:
            abs_s = f"{c.max_abs:10.3e}" if c.max_abs is not None else f"{'-':>10}"
            rel_s = f"{c.max_rel:10.3e}" if c.max_rel is not None else f"{'-':>10}"
            lines.append(f"{c.name:<{width}}  {abs_s}  {rel_s}  {'PASS' if c.passed else 'FAIL'}"
                         + (f"  {c.detail}" if c.detail else ""))
        n_fail = sum(not c.passed for c in self.checks)
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(f"{verdict}: {len(self.checks) - n_fail}/{len(self.checks)} checks passed")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- comparisons
def compare_tensor(name: str, actual: torch.Tensor | None, expected: torch.Tensor, rtol=FLOAT_RTOL,
                   atol=FLOAT_ATOL) -> Check:
    if actual is None:
        return Check(name, False, detail="our implementation produced no such tensor")
    actual = actual.detach().cpu()
    if actual.shape != expected.shape:
        official_frame_axis = expected.dim() == 5 and expected.shape[2] == 1 and actual.dim() == 4
        if official_frame_axis and actual.shape == expected.squeeze(2).shape:
            actual = actual.unsqueeze(2)  # the official UNet3D carries a singleton frame axis
        else:
            return Check(name, False, detail=f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if not expected.is_floating_point():
        equal = torch.equal(actual.to(expected.dtype), expected)
        diff = (actual.double() - expected.double()).abs().max().item() if expected.numel() else 0.0
        return Check(name, equal, diff, None, "" if equal else "integer tensors must match exactly")
    a, e = actual.double(), expected.double()
    if not torch.isfinite(a).all():
        return Check(name, False, detail="non-finite values")
    diff = (a - e).abs()
    max_abs = diff.max().item() if diff.numel() else 0.0
    scale = e.abs().max().item() if e.numel() else 0.0
    ok = bool((diff <= atol + rtol * e.abs()).all())
    return Check(name, ok, max_abs, max_abs / scale if scale else max_abs)


def compare_png(name: str, actual_uint8: torch.Tensor, expected_path: Path, levels=PNG_LEVELS) -> Check:
    from PIL import Image

    expected = torch.from_numpy(np.asarray(Image.open(expected_path).convert("RGB"), dtype=np.int16))
    actual = actual_uint8.to(torch.int16)
    if actual.shape != expected.shape:
        return Check(name, False, detail=f"shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    diff = (actual - expected).abs()
    frac = (diff > 0).float().mean().item()
    return Check(name, diff.max().item() <= levels, float(diff.max().item()), None,
                 f"{frac:.2%} of values differ (<= {levels} level allowed)")


def official_cva_layout(ours: torch.Tensor, expected: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Rearrange a tensor from inside our CVA into the official layout, where the views are stacked frames.

    canvas (B, C, R*h, Cg*w)  -> (B, C, V, h, w)   (official temporal_transformer input/output)
    tokens (B*h*w, V, C)      -> (B*V, h*w, C)     (official "(b f) d c" inside the transformer)
    Anything already in the expected shape is returned unchanged.
    """
    if ours.shape == expected.shape or ours.numel() != expected.numel():
        return ours
    rows, cols = grid
    if ours.dim() == 4 and expected.dim() == 5 and expected.shape[2] == rows * cols:
        b, c, height, width = ours.shape
        views = ours.reshape(b, c, rows, height // rows, cols, width // cols).permute(0, 1, 2, 4, 3, 5)
        return views.reshape(expected.shape)
    if ours.dim() == 3 and expected.dim() == 3:
        num_views, hw, channels = ours.shape[1], expected.shape[1], ours.shape[2]
        batch = expected.shape[0] // num_views
        return ours.reshape(batch, hw, num_views, channels).permute(0, 2, 1, 3).reshape(expected.shape)
    return ours


# ----------------------------------------------------------------------------- reading fixtures
REFETCH = "copy the fixture folder again (tests/fixtures/official ships complete ones)"


def _read_json(path: Path, required: tuple[str, ...] = ()):
    """The JSON of a fixture file; with ``required``, an object holding those keys."""
    data = read_json(path, REFETCH)
    _require(data, required, path)
    return data


def _require(data, keys: tuple[str, ...], path: Path) -> None:
    if keys and not isinstance(data, dict):
        raise InputFileError(f"{path} must hold a JSON object with {', '.join(keys)}; {REFETCH}.")
    missing = [key for key in keys if key not in data]
    if missing:
        raise InputFileError(f"{path} has no {missing[0]!r}; {REFETCH}.")


def _read_tensors(path: Path, required: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputFileError(f"Fixture file {path} is missing; {REFETCH}.")
    tensors = load_state_dict_file(path)
    _require(tensors, required, path)
    return tensors


def _weights(folder: Path, stem: str) -> Path:
    for suffix in (".safetensors", ".pth", ".pt", ".bin"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    raise InputFileError(f"{folder} has no {stem}.safetensors/.pth weight file; {REFETCH}.")


def load_official_models(folder: Path, attention_backend: str = "eager"):
    """Convert the official UNet / PoseGuider / PatchEmbedding weights of a fixture folder."""
    from .convert import (
        convert_flc,
        convert_pose_guider,
        convert_unet,
        flc_config_from_official,
        pose_guider_config_from_official,
        unet_config_from_official,
    )

    config = _read_json(folder / "config.json", ("unet3d_config", "pose_guider_init", "patch_init"))
    unet_cfg = unet_config_from_official(config["unet3d_config"], config.get("unet_additional_kwargs"))
    unet, _ = convert_unet(_weights(folder, "denoising_unet"), unet_cfg)
    pose_guider, _ = convert_pose_guider(_weights(folder, "pose_guider"),
                                         pose_guider_config_from_official(config["pose_guider_init"]))
    flc, _ = convert_flc(_weights(folder, "patch"), flc_config_from_official(config["patch_init"]))
    unet.set_cva_backend(attention_backend)
    return unet.eval(), pose_guider.eval(), flc.eval()


def _first_tensor(obj):
    if torch.is_tensor(obj):
        return obj
    if hasattr(obj, "last_hidden_state"):
        return obj.last_hidden_state
    if hasattr(obj, "sample") and torch.is_tensor(obj.sample):
        return obj.sample
    if isinstance(obj, (tuple, list)) and obj:
        return _first_tensor(obj[0])
    return None


class _Recorder:
    """Forward hooks that record module inputs/outputs by name."""

    def __init__(self):
        self.records: dict[str, list[torch.Tensor]] = {}
        self.handles = []

    def _store(self, key, value):
        tensor = _first_tensor(value)
        if tensor is not None:
            self.records.setdefault(key, []).append(tensor.detach().clone())

    def watch(self, module, key: str, inputs: bool = True, outputs: bool = True):
        if inputs:
            self.handles.append(module.register_forward_pre_hook(
                lambda m, args, kwargs: self._store(f"{key}.in", args or list(kwargs.values())), with_kwargs=True))
        if outputs:
            self.handles.append(module.register_forward_hook(lambda m, a, out: self._store(f"{key}.out", out)))

    def get(self, key: str, call: int = 0):
        values = self.records.get(key, [])
        return values[call] if len(values) > call else None

    def close(self):
        for handle in self.handles:
            handle.remove()


def _deterministic():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(min(2, torch.get_num_threads()))


# ----------------------------------------------------------------------------- unet fixture
def verify_unet_fixture(folder: Path, attention_backend: str = "eager") -> VerifyReport:
    report = VerifyReport(str(folder), "unet")
    unet, pose_guider, flc = load_official_models(folder, attention_backend)
    inputs = _read_tensors(folder / "inputs.safetensors",
                           ("patch_input", "pose_image", "sample", "timestep", "encoder_hidden_states"))
    outputs = _read_tensors(folder / "outputs.safetensors")
    inter_path = folder / "intermediates.safetensors"
    intermediates = _read_tensors(inter_path) if inter_path.is_file() else {}

    recorder = _Recorder()
    modules = dict(unet.named_modules())
    missing = []
    for name in intermediates:
        module_name, _, direction = name.rpartition(".")
        if module_name in modules and direction in ("in", "out"):
            recorder.watch(modules[module_name], module_name, direction == "in", direction == "out")
        else:
            missing.append(name)
    _deterministic()
    with torch.no_grad():
        patch_tokens = flc(inputs["patch_input"])
        pose_features = pose_guider(inputs["pose_image"])
        sample = inputs["sample"].squeeze(2) if inputs["sample"].dim() == 5 else inputs["sample"]
        out = unet(sample, inputs["timestep"], inputs["encoder_hidden_states"], pose_features).sample
    recorder.close()

    ours = {"out": out, "pose_cond_fea": pose_features, "patch_tokens": patch_tokens}
    for name, expected in outputs.items():
        if name not in ours:
            report.checks.append(Check(f"outputs/{name}", False, detail="no rule to reproduce this output"))
            continue
        report.checks.append(compare_tensor(f"outputs/{name}", ours[name], expected))
    if "dino_tokens" in inputs and "encoder_hidden_states" in inputs:
        context = torch.cat([inputs["dino_tokens"], patch_tokens], dim=1)
        null_rows = inputs["encoder_hidden_states"].flatten(1).abs().sum(1) == 0
        context[null_rows] = 0.0
        report.checks.append(compare_tensor("inputs/encoder_hidden_states", context, inputs["encoder_hidden_states"]))
    for name, expected in intermediates.items():
        if name in missing:
            report.checks.append(Check(f"intermediates/{name}", False, detail="no module of that name in ours"))
        else:
            actual = recorder.get(name)
            if ".temporal_transformer" in name and actual is not None:
                actual = official_cva_layout(actual, expected, tuple(unet.config.default_grid))
            report.checks.append(compare_tensor(f"intermediates/{name}", actual, expected))
    return report


# ----------------------------------------------------------------------------- pipeline fixture
PIPELINE_FOLDERS = ("images", "vae", "image_encoder", "scheduler")
PIPELINE_CALL_KEYS = ("tiles", "tile_height", "tile_width", "height", "width", "ref_image", "num_inference_steps",
                      "guidance_scale", "generator_seed")


def _unet_weights_folder(folder: Path, config: dict) -> Path:
    if (folder / "config.json").is_file() and any(folder.glob("denoising_unet.*")):
        return folder
    pointer = str(config.get("unet_weights", "")).split(" ")[0]
    candidate = (folder / pointer).resolve()
    if pointer and (candidate / "config.json").is_file():
        return candidate
    raise InputFileError(f"Cannot find the UNet weights of {folder}: neither in it nor at its config's "
                         f"'unet_weights'={pointer!r} (resolved to {candidate}); keep the fixture next to the unet "
                         "fixture it points to.")


def build_fixture_request(folder: Path, call: dict):
    """The fixture's tiles as our own request: flag 1 -> source (person + pose), flag 0 -> target (pose)."""
    from .canvas import PoseRequest, View

    call_path = folder / "call_args.json"
    tiles = call["tiles"]
    _require(tiles, ("person", "pose", "flag"), call_path)
    tile_h, tile_w = int(call["tile_height"]), int(call["tile_width"])
    rows, cols = int(call["height"]) // tile_h, int(call["width"]) // tile_w
    images = folder / "images"
    views = []
    for person, pose, flag in zip(tiles["person"], tiles["pose"], tiles["flag"]):
        if int(flag) == 1:
            views.append(View.source(images / person, images / pose))
        elif person == "black":
            views.append(View.target(images / pose))
        else:
            raise InputFileError(f"{call_path}: a tile with flag 0 shows {person!r}; official targets are black tiles.")
    ref_name = Path(call["ref_image"]).name
    reference = next((i for i, p in enumerate(tiles["person"]) if p == ref_name), None)
    if reference is None:
        raise InputFileError(f"{call_path}: ref_image {ref_name} is not one of the source tiles {tiles['person']}.")
    return PoseRequest(views, grid=(rows, cols), tile_size=(tile_h, tile_w), reference=reference)


def verify_pipeline_fixture(folder: Path, attention_backend: str = "eager") -> VerifyReport:
    from diffusers import AutoencoderKL, DDIMScheduler

    from .images import tensor_to_pil
    from .models import IMAGPoseImageEncoder
    from .pipeline import IMAGPosePipeline

    report = VerifyReport(str(folder), "pipeline")
    for part in PIPELINE_FOLDERS:
        if not (folder / part).is_dir():
            raise InputFileError(f"Pipeline fixture {folder} has no {part}/ folder; {REFETCH}.")
    config = _read_json(folder / "config.json")
    call = _read_json(folder / "call_args.json", PIPELINE_CALL_KEYS)
    expected_all = _read_tensors(folder / "tensors.safetensors")
    unet, pose_guider, flc = load_official_models(_unet_weights_folder(folder, config), attention_backend)
    pipe = IMAGPosePipeline(
        unet=unet, vae=AutoencoderKL.from_pretrained(folder / "vae").eval(),
        image_encoder=IMAGPoseImageEncoder.from_pretrained(folder / "image_encoder").eval(),
        flc_tokenizer=flc, pose_guider=pose_guider,
        scheduler=DDIMScheduler.from_pretrained(folder / "scheduler"),
    )
    request = build_fixture_request(folder, call)

    recorder = _Recorder()
    recorder.watch(pipe.image_encoder, "image_encoder")
    recorder.watch(pipe.flc_tokenizer, "flc")
    recorder.watch(pipe.vae.encoder, "vae.encoder", outputs=False)
    recorder.watch(pipe.vae.quant_conv, "vae.quant_conv", inputs=False)
    recorder.watch(pipe.vae.post_quant_conv, "vae.post_quant_conv", outputs=False)
    recorder.watch(pipe.pose_guider, "pose_guider", inputs=False)
    recorder.watch(pipe.unet, "unet")
    context_calls: list[torch.Tensor] = []
    recorder.handles.append(pipe.unet.register_forward_pre_hook(
        lambda m, args: context_calls.append(args[2].detach().clone())))
    steps_after: list[torch.Tensor] = []
    timesteps: list[torch.Tensor] = []  # the call's own scheduler steps them (pipe.scheduler is never changed)

    def on_step_end(_pipe, _i, t, kwargs):
        steps_after.append(kwargs["latents"].detach().clone())
        timesteps.append(t)

    _deterministic()
    output = pipe(request, num_inference_steps=int(call["num_inference_steps"]),
                  guidance_scale=float(call["guidance_scale"]), eta=float(call.get("eta", 0.0)),
                  generator=torch.Generator("cpu").manual_seed(int(call["generator_seed"])), output_type="pt",
                  callback_on_step_end=on_step_end, progress=False)
    recorder.close()
    result = output.results[0]
    canvas = pipe.build_canvas(request)

    ours = {
        "call.flag_label": canvas.flag,
        "clip_pixel_values": recorder.get("image_encoder.in"),
        "image_prompt_embeds": recorder.get("image_encoder.out"),
        "ref_image_tensor": recorder.get("vae.encoder.in", 0),
        "ref_vae_moments": recorder.get("vae.quant_conv.out", 0),
        "ref_image_latents": recorder.get("flc.in"),
        "patch_tokens": recorder.get("flc.out"),
        "image_mask_vae_moments": recorder.get("vae.quant_conv.out", 1),
        "pose_guider_out": recorder.get("pose_guider.out"),
        "encoder_hidden_states": context_calls[0] if context_calls else None,
        "timesteps": torch.stack(timesteps) if timesteps else None,
        "final_latents": result.latents[None],
        "vae_decode_in": recorder.get("vae.post_quant_conv.in"),
        "image": result.canvas[None],
    }
    unet_in = recorder.get("unet.in")
    if unet_in is not None:
        ours["initial_noise"] = unet_in[:1, :4]
    step_rule = re.compile(r"^step(\d+)\.(unet_in|unet_out|latents_after)$")
    for name, expected in expected_all.items():
        match = step_rule.match(name)
        if match:
            i, what = int(match.group(1)), match.group(2)
            actual = {"unet_in": recorder.get("unet.in", i), "unet_out": recorder.get("unet.out", i),
                      "latents_after": steps_after[i] if i < len(steps_after) else None}[what]
            report.checks.append(compare_tensor(name, actual, expected))
        elif name in ours:
            report.checks.append(compare_tensor(name, ours[name], expected))
        else:
            report.checks.append(Check(name, False, detail="no rule to reproduce this tensor"))
    png = folder / "images" / "output.png"
    if png.is_file():
        uint8 = torch.from_numpy(np.array(tensor_to_pil(result.canvas[None])[0]))
        report.checks.append(compare_png("images/output.png", uint8, png))
    return report


# ----------------------------------------------------------------------------- manifest fixture
def _manifest_model(keys: list[dict], summary: dict, summary_path: Path):
    """Build (on meta) the model of ours that corresponds to a key manifest, judged by its keys."""
    from .convert import flc_config_from_official, pose_guider_config_from_official, unet_config_from_official
    from .models import FLCTokenizer, IMAGPoseUNet, PoseGuider

    names = {k["key"] for k in keys}
    with torch.device("meta"):
        if "time_embedding.linear_1.weight" in names:
            _require(summary, ("unet3d_config",), summary_path)
            config = unet_config_from_official(summary["unet3d_config"], summary.get("unet_additional_kwargs"))
            if not any(".motion_modules." in n for n in names):  # stage-1 2D UNet: no CVA
                levels = len(config["block_out_channels"])
                config.update(cva_down_blocks=[False] * levels, cva_mid_block=False, cva_up_blocks=[False] * levels)
            return IMAGPoseUNet(**config)
        if names == {"proj.weight", "proj.bias"}:
            _require(summary, ("patch_init",), summary_path)
            return FLCTokenizer(**flc_config_from_official(summary["patch_init"]))
        if "conv_out.weight" in names and any(n.startswith("blocks.") for n in names):
            _require(summary, ("pose_guider_init",), summary_path)
            return PoseGuider(**pose_guider_config_from_official(summary["pose_guider_init"]))
    return None


def verify_manifest_fixture(folder: Path) -> VerifyReport:
    report = VerifyReport(str(folder), "manifest")
    summary_path = folder / "summary.json"
    summary = _read_json(summary_path)
    for path in sorted(folder.glob("*.keys.json")):
        keys = _read_json(path)
        if not isinstance(keys, list) or not all(isinstance(k, dict) and {"key", "shape"} <= set(k) for k in keys):
            raise InputFileError(f"{path} must be a list of {{'key', 'shape'}} objects; {REFETCH}.")
        model = _manifest_model(keys, summary, summary_path)
        name = path.name
        if model is None:
            report.checks.append(Check(name, False, detail="no component of ours matches these keys"))
            continue
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        theirs = {k["key"]: tuple(k["shape"]) for k in keys}
        only_theirs, only_ours = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
        bad_shapes = [k for k in theirs if k in ours and ours[k] != theirs[k]]
        ok = not (only_theirs or only_ours or bad_shapes)
        numbers = sum(int(torch.Size(s).numel()) for s in ours.values())
        detail = f"{len(theirs)} keys, {numbers:,} numbers"
        if not ok:
            detail = (f"missing in ours {only_theirs[:3]}, extra in ours {only_ours[:3]}, "
                      f"shape mismatches {bad_shapes[:3]}")
        report.checks.append(Check(name, ok, detail=detail))
    return report


# ----------------------------------------------------------------------------- entry points
def fixture_kind(folder: Path) -> str | None:
    if (folder / "call_args.json").is_file() and (folder / "tensors.safetensors").is_file():
        return "pipeline"
    if (folder / "inputs.safetensors").is_file() and (folder / "outputs.safetensors").is_file():
        return "unet"
    if any(folder.glob("*.keys.json")) and (folder / "summary.json").is_file():
        return "manifest"
    return None


def find_fixtures(root: str | Path) -> list[Path]:
    """``root`` itself if it is a fixture folder, else its fixture subfolders (sorted)."""
    root = Path(root)
    if not root.exists():
        raise InputFileError(f"Fixture folder not found: {root}; pass the folder of the official fixtures "
                             "(tests/fixtures/official in the imagpose repository).")
    if not root.is_dir():
        raise InputFileError(f"{root} is not a folder; pass a fixture folder or a folder of them.")
    if fixture_kind(root):
        return [root]
    found = sorted(p for p in root.iterdir() if p.is_dir() and fixture_kind(p))
    if not found:
        raise InputFileError(
            f"{root} holds no official fixture folder: a fixture is a unet (inputs.safetensors + outputs.safetensors), "
            "pipeline (call_args.json + tensors.safetensors) or manifest (*.keys.json + summary.json) folder; pass "
            "one of them or a folder of them (tests/fixtures/official in the imagpose repository).")
    return found


def verify_fixture(folder: str | Path, attention_backend: str = "eager") -> VerifyReport:
    folder = Path(folder)
    kind = fixture_kind(folder)
    if kind == "unet":
        return verify_unet_fixture(folder, attention_backend)
    if kind == "pipeline":
        return verify_pipeline_fixture(folder, attention_backend)
    if kind == "manifest":
        return verify_manifest_fixture(folder)
    raise InputFileError(f"{folder} is not an official fixture folder (unet, pipeline or manifest layout).")
