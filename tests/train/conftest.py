"""Training items from the shipped samples (two people x five poses), built with the inference canvas code in the
layout of the trainer's item dict (imagpose.train.data): small, deterministic stand-ins for a generated dataset."""

import pytest
import torch
from PIL import Image

from imagpose.canvas import PoseRequest, View, build_canvas
from imagpose.conditions import dino_pixels, reference_canvas_pixels
from imagpose.pose import keypoints_from_json
from imagpose.samples import sample

PEOPLE = ("red", "blue")
POSES = ("front", "arms_up", "walking", "hands_on_hips", "side")
TILE = (64, 64)  # (height, width)
TINY_PAD = 32  # tiny preset: 8 (VAE) x 4 (UNet levels), IMAGPosePipeline.pad_multiple


def _views():
    views = {}
    for person in PEOPLE:
        for pose in POSES:
            image, keypoints = sample(f"person_{person}_{pose}")
            views[person, pose] = (Image.open(image).convert("RGB"), keypoints_from_json(keypoints))
    return views


VIEWS = _views()


def sample_request(person: str, poses: list[str], targets: list[int], reference: int, seed: int = 0,
                   tile=TILE) -> PoseRequest:
    views = [View.target(VIEWS[person, p][1]) if i in targets else View.source(*VIEWS[person, p])
             for i, p in enumerate(poses)]
    return PoseRequest(views=views, grid=(2, 2), tile_size=tile, seed=seed, reference=reference)


def training_item(person: str, poses: list[str], targets: list[int], reference: int, tile=TILE) -> dict:
    """The trainer's item dict. The full canvas is the masked canvas plus its complement (the same request with
    sources and targets swapped): tiles are disjoint and black elsewhere."""
    canvas = build_canvas(sample_request(person, poses, targets, reference, tile=tile), TINY_PAD)
    others = [i for i in range(4) if i not in targets]
    complement = build_canvas(sample_request(person, poses, others, targets[0], tile=tile), TINY_PAD)
    return dict(
        target_pixels=(canvas.person + complement.person) * 2 - 1,
        masked_pixels=canvas.person * 2 - 1,
        pose=canvas.pose,
        flag=canvas.flag,
        dino_pixels=dino_pixels(canvas.reference),
        reference_pixels=reference_canvas_pixels(canvas.reference, canvas.layout.canvas_size),
        grid=(2, 2),
    )


class SampleDataset(torch.utils.data.Dataset):
    """``length`` items, item i a function of (seed, i). With ``stateful=True`` every read also draws one of four
    variants of the item from one generator (the dataset's ``state_dict``, as a resumable dataset's own RNG)."""

    def __init__(self, length: int = 8, seed: int = 0, stateful: bool = False, tile=TILE):
        self.length, self.seed, self.stateful, self.tile = length, seed, stateful, tile
        self.generator = torch.Generator().manual_seed(seed)
        self.cache = {}

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        variant = int(torch.randint(0, 4, (1,), generator=self.generator)) if self.stateful else 0
        if (index, variant) not in self.cache:
            self.cache[index, variant] = self._item(index, variant)
        return self.cache[index, variant]

    def _item(self, index: int, variant: int) -> dict:
        generator = torch.Generator().manual_seed((self.seed * 1000 + index) * 4 + variant)
        person = PEOPLE[int(torch.randint(0, 2, (1,), generator=generator))]
        poses = [POSES[k] for k in torch.randint(0, 5, (4,), generator=generator).tolist()]
        if len(set(poses)) == 1:  # views drawn with replacement, not all identical (official)
            poses[-1] = POSES[(POSES.index(poses[0]) + 1) % len(POSES)]
        order = torch.randperm(4, generator=generator).tolist()
        targets = sorted(order[: 1 + int(torch.randint(0, 3, (1,), generator=generator))])  # 1..3 targets
        reference = next(i for i in order if i not in targets)
        return training_item(person, poses, targets, reference, self.tile)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()} if self.stateful else {}

    def load_state_dict(self, state: dict) -> None:
        if self.stateful:
            self.generator.set_state(state["generator"])


@pytest.fixture(scope="session")
def sample_dataset():
    return SampleDataset()


@pytest.fixture(scope="session")
def people_dataset(tmp_path_factory):
    """A generated dataset of 6 people x 4 views at 64x64 (imagpose.synthetic), shared read-only."""
    from imagpose.synthetic.dataset import make_dataset

    root = tmp_path_factory.mktemp("people")
    make_dataset(root, 6, seed=3, views_per_identity=4, test_fraction=0.34)
    return root
