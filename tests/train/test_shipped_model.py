"""The shipped trained model reproduces colour and scores better than the same architecture untrained on people it
never saw (the full held-out evaluation is in docs/training.md; this is its quick guard)."""

import torch

from imagpose.autoencoders import colour_capacity_problem, load_autoencoder
from imagpose.pretrained import shipped_model_dir, trained_tile_size
from imagpose.seeds import HELD_OUT_PEOPLE_SEED
from imagpose.synthetic.dataset import make_dataset
from imagpose.train.evaluation import evaluate
from imagpose.train.vae_measures import colour_round_trip_errors


def test_the_shipped_model_beats_its_untrained_self_on_unseen_people(tmp_path):
    folder = shipped_model_dir()
    make_dataset(tmp_path / "people", 6, seed=HELD_OUT_PEOPLE_SEED, size=trained_tile_size(folder), test_fraction=0.99)
    torch.manual_seed(0)
    result = evaluate(folder, tmp_path / "people", steps=8, max_items=4)
    assert result.summary["model"]["ssim"] > result.summary["untrained"]["ssim"] + 0.2
    assert result.summary["model"]["color_error"] < result.summary["untrained"]["color_error"]
    assert result.summary["model"]["pose_iou"] > result.summary["untrained"]["pose_iou"]


def test_the_shipped_autoencoder_round_trips_flat_and_two_colour_images():
    """Flat colours and a person-sized rectangle of one colour on another keep their colours within 0.1 per channel
    (in [0, 1]) through the shipped autoencoder, at the tile size it was trained on."""
    folder = shipped_model_dir()
    vae = load_autoencoder(folder / "vae")
    assert colour_capacity_problem(vae) is None
    errors = colour_round_trip_errors(vae, trained_tile_size(folder))
    assert errors["flat"] <= 0.1 and errors["two_colour"] <= 0.1, errors
