import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def official_fixture_root() -> Path:
    return Path(os.environ.get("IMAGPOSE_FIXTURES", REPO.parent / "shared" / "fixtures" / "official"))


@pytest.fixture(scope="session")
def fixture_root() -> Path:
    root = official_fixture_root()
    if not root.is_dir():
        pytest.skip(f"official fixtures not found at {root} (set IMAGPOSE_FIXTURES)")
    return root


@pytest.fixture(scope="session")
def tiny_pipe():
    from imagpose import build_pipeline

    torch.manual_seed(0)
    return build_pipeline("tiny", seed=0)


@pytest.fixture(scope="session")
def samples():
    from imagpose.samples import sample

    return sample
