"""Consistency distillation (`imagpose train distill`) at toy sizes: the loss it optimises, exact resume, the student's
pipeline folder, and every caller sampling a student with its own few-step defaults."""

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from imagpose import scenarios
from imagpose.cli import main
from imagpose.errors import InvalidArgumentError
from imagpose.pipeline import IMAGPosePipeline
from imagpose.presets import build_pipeline
from imagpose.sampling_config import SamplingConfig
from imagpose.sdk import IMAGPoseGenerator
from imagpose.train.config import load_config
from imagpose.train.distillation import DistillationTask, run_distillation, solver_timesteps

TOY = ["stages.distill.steps=2", "stages.distill.batch_size=2", "stages.distill.checkpoint_every=1",
       "stages.distill.validate_every=2", "validation.num_requests=1", "data.tile_size=[64,48]",
       "optimizer.warmup_steps=1"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    build_pipeline("tiny", seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def student(teacher, people_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    run_distillation(load_config("tiny", TOY), teacher, people_dataset, out, progress=False)
    return out


def unet_calls(pipe):
    """The rows of every UNet call of ``pipe`` (a forward hook on its UNet)."""
    rows = []
    pipe.unet.register_forward_hook(lambda module, args, output: rows.append(len(args[0])))
    return rows


def request(samples, seed=0):
    image, pose = samples("person_blue_front")
    _, target = samples("person_blue_walking")
    return scenarios.t2(image, pose, target, tile_size=(64, 48), seed=seed)


def test_the_solver_steps_are_the_teachers_trailing_ddim_steps():
    steps = solver_timesteps(50)
    assert steps[0] == 19 and steps[-1] == 999 and len(steps) == 50 and bool((steps.diff() == 20).all())


def test_one_step_lowers_the_loss_on_a_fixed_batch(teacher, people_dataset, tmp_path):
    from accelerate import Accelerator

    config = load_config("tiny", [*TOY, "validation.num_requests=0"])
    task = DistillationTask(config, teacher, people_dataset)
    accelerator = Accelerator(cpu=True)
    task.setup(accelerator, tmp_path, 0)
    batch = next(iter(task.batches(0, task.settings, 0, 1)))
    optimizer = torch.optim.AdamW([p for p in task.model.parameters() if p.requires_grad], lr=1e-4)
    before, _ = task.loss(task.model, batch, 0, 0, accelerator)  # step 0: the target does not move
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after, _ = task.loss(task.model, batch, 0, 0, accelerator)
    assert after < before
    # the student was trained, the target (an EMA of it, moved only between steps) and the teacher were not
    assert not torch.equal(task.model.unet.conv_out.weight, task.teacher.unet.conv_out.weight)
    assert torch.equal(task.model.target_unet.conv_out.weight, task.teacher.unet.conv_out.weight)


def test_the_student_folder_records_its_few_step_sampling(student):
    pipe = IMAGPosePipeline.from_pretrained(student / "pipeline")
    assert pipe.sampler == "lcm" and type(pipe.scheduler).__name__ == "LCMScheduler"
    assert pipe.default_sampling == SamplingConfig(num_inference_steps=4, guidance_scale=1.0, sampler="lcm")
    assert pipe.distillation["ddim_timesteps"] == 50 and pipe.distillation["teacher_guidance"] == 2.0
    assert pipe.scheduler.config.original_inference_steps == 50
    assert (student / "validation" / "step-000002.png").is_file()
    configs = "".join(path.read_text() for path in (student / "pipeline").rglob("*.json"))
    assert "_name_or_path" not in configs  # the teacher's folder on this machine does not travel with the student
    with IMAGPoseGenerator(pipe) as generator:  # the SDK
        assert generator.sampling == pipe.default_sampling
    with pytest.raises(InvalidArgumentError, match="lcm sampler takes at most 50 steps"):
        pipe.sampling_config(num_inference_steps=51)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_the_student_makes_exactly_n_unguided_unet_calls(student, samples, steps):
    pipe = IMAGPosePipeline.from_pretrained(student / "pipeline")
    rows = unet_calls(pipe)
    output = pipe(request(samples), num_inference_steps=steps, progress=False, output_type="latent")
    assert rows == [1] * steps  # one request, no [uncond, cond] pair
    assert torch.isfinite(output.results[0].latents).all()


@pytest.mark.parametrize("sampling", [{}, {"sampler": "tcd", "eta": 0.3}], ids=["lcm", "tcd"])
def test_the_student_is_deterministic_per_seed_and_batch_independent(student, samples, sampling):
    pipe = IMAGPosePipeline.from_pretrained(student / "pipeline")
    alone = pipe(request(samples, seed=5), progress=False, output_type="latent", **sampling).results[0].latents
    batched = pipe([request(samples, seed=1), request(samples, seed=5)], progress=False, output_type="latent",
                   **sampling).results[1].latents
    assert torch.allclose(alone, batched, atol=1e-5)  # the noise between steps comes from the request's seed


def test_the_cli_distils_and_records_the_command(teacher, people_dataset, tmp_path):
    argv = ["train", "distill", "--teacher", str(teacher), "--data", str(people_dataset), "--out",
            str(tmp_path / "run"), "--no-progress", *(word for override in TOY for word in ("--set", override)),
            "--set", "stages.distill.steps=1", "--set", "validation.num_requests=0"]
    assert main(argv) == 0
    record = json.loads((tmp_path / "run" / "pipeline" / "training.json").read_text())
    assert record["command"].startswith("imagpose train distill --teacher ") and "stages.distill.steps=1" in record[
        "command"]
    assert record["tile_size"] == [64, 48] and record["distillation"]["student_steps"] == 4


def test_generate_uses_the_students_defaults_and_flags_replace_them(student, samples, tmp_path):
    image, pose = samples("person_blue_front")
    _, target = samples("person_blue_walking")
    argv = ["generate", "--model", str(student / "pipeline"), "--source", str(image), str(pose), "--target",
            str(target), "--tile-size", "64x48", "--no-progress"]
    assert main(argv + ["--out", str(tmp_path / "default")]) == 0
    recorded = json.loads((tmp_path / "default" / "result.json").read_text())["sampling"]
    assert (recorded["sampler"], recorded["num_inference_steps"], recorded["guidance_scale"]) == ("lcm", 4, 1.0)
    assert main(argv + ["--steps", "2", "--out", str(tmp_path / "two")]) == 0
    recorded = json.loads((tmp_path / "two" / "result.json").read_text())["sampling"]
    assert (recorded["sampler"], recorded["num_inference_steps"]) == ("lcm", 2)


def test_stopping_and_resuming_gives_the_uninterrupted_run(student, teacher, people_dataset, tmp_path):
    config = load_config("tiny", TOY)
    part = tmp_path / "part"
    run_distillation(config, teacher, people_dataset, part, stop_after=1, progress=False)
    run_distillation(config, teacher, people_dataset, part, resume=True, progress=False)

    def losses(out):
        with open(out / "log.csv", newline="") as handle:
            return [float(row["loss"]) for row in csv.DictReader(handle)]

    assert losses(part) == losses(student)
    # the final checkpoints hold the student and its target network: equal, bit for bit
    whole, resumed = (load_file(str(out / "checkpoints" / "step-000002" / "model.safetensors"))
                      for out in (student, part))
    assert any(key.startswith("target_unet.") for key in whole) and whole.keys() == resumed.keys()
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)


def test_a_student_is_not_distilled_again(student, people_dataset, tmp_path):
    with pytest.raises(InvalidArgumentError, match="already a distilled student"):
        DistillationTask(load_config("tiny", TOY), student / "pipeline", people_dataset)


def test_the_quality_bench_puts_the_student_beside_the_teacher(student):
    from imagpose.bench.quality import DEFAULT, full_size_flops, student_settings, sweep

    settings = student_settings(student / "pipeline")
    assert [s.name for s in settings] == ["student lcm 4", "student lcm 2", "student lcm 1", "undistilled lcm 4"]
    assert settings[0].model == str(student / "pipeline") and settings[-1].model is None  # the control: the teacher
    assert sweep("quick", student / "pipeline")[-4:] == settings
    # the whole call at the tiny architecture: 40 UNet batch-rows of the default against the student's 4 (the encoders
    # and the decode are the same work)
    default, four = (full_size_flops(s, "tiny") for s in (DEFAULT, settings[0]))
    assert default > 5 * four > 0


def test_eval_scores_and_times_the_student_beside_its_teacher(student, teacher, tmp_path):
    from PIL import Image

    from imagpose.synthetic.dataset import make_dataset
    from imagpose.train.evaluation import evaluate

    make_dataset(tmp_path / "heldout", 2, seed=1000, size=(64, 48), test_fraction=0.999)
    evaluation = evaluate(teacher, tmp_path / "heldout", tmp_path / "eval", steps=2, max_items=1,
                          student=student / "pipeline")
    summary = evaluation.summary
    assert list(summary["students"]) == ["student_4", "student_2", "student_1"]
    assert summary["students"]["student_2"]["sampling"]["sampler"] == "lcm"
    assert set(summary["seconds_per_image"]) >= {"model", "untrained", "student_4", "student_1"}
    assert "student_1" in evaluation.table()
    figure = Image.open(tmp_path / "eval" / "figure.png")  # source | pose | teacher | 4 | 2 | 1 | ground truth
    assert figure.width == 7 * 48
