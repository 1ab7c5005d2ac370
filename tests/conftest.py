import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# `python -m pytest` puts the working directory first on sys.path; from the repository root the top-level
# folders (kernels/, export/, train/, ...) would then shadow installed packages of the same names (Hugging
# Face's `kernels`, which transformers and diffusers import). Our code and tests import those folders only as
# imagpose.*, so the root is taken off the path before anything else is imported.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != REPO]

# Without a GPU, Triton kernels run in its interpreter; the variable must be set before anything imports triton
# (diffusers does, indirectly), so it is set here, before the first import of torch or imagpose.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402  (after the sys.path and TRITON_INTERPRET set-up above)
import torch  # noqa: E402

# The official-code fixtures ship with the repository (tests/fixtures/official: tensors made by running the
# official code). IMAGPOSE_FIXTURES points the same tests at another fixture set of that layout.
SHIPPED_FIXTURES = REPO / "tests" / "fixtures" / "official"


def official_fixture_root() -> Path:
    return Path(os.environ.get("IMAGPOSE_FIXTURES", SHIPPED_FIXTURES))


def official_fixture_params() -> list:
    """pytest params, one per official fixture folder. A missing or empty fixture set is an error, not a skip:
    the verification claims rest on these tests."""
    from imagpose.verify import find_fixtures

    root = official_fixture_root()
    folders = find_fixtures(root) if root.is_dir() else []
    if not folders:
        raise pytest.UsageError(f"no official fixtures at {root}; they ship in tests/fixtures/official "
                                "(or set IMAGPOSE_FIXTURES to a folder of that layout)")
    return [pytest.param(p, id=p.name) for p in folders]


@pytest.fixture
def one_thread():
    """One intra-op thread: with few cores shared between processes, OpenMP spin-waiting makes small ops ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fixture_root() -> Path:
    root = official_fixture_root()
    if not root.is_dir():
        pytest.fail(f"official fixtures not found at {root} (they ship in tests/fixtures/official)")
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
