import os
import shutil
from pathlib import Path

# Without a GPU, Triton kernels run in its interpreter; the variable must be set before anything imports triton
# (diffusers does, indirectly), so it is set here, before the first import of torch or imagpose.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def official_fixture_root() -> Path:
    return Path(os.environ.get("IMAGPOSE_FIXTURES", REPO.parent / "shared" / "fixtures" / "official"))


def official_fixture_params() -> list:
    """pytest params, one per official fixture folder (a single skip when the fixtures are absent)."""
    from imagpose.verify import find_fixtures

    root = official_fixture_root()
    if not root.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no fixtures at {root}"))]
    return [pytest.param(p, id=p.name) for p in find_fixtures(root)]


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core box, OpenMP spin-waiting makes small ops ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
