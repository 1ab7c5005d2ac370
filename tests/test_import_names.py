"""One import name per module: the repository's top-level folders are importable only as ``imagpose.*``.

If ``bench``, ``export``, ``kernels`` or ``train`` were importable by their folder names, a module could load
twice under two names (two copies of every class: ``isinstance`` fails across them, custom ops and backends
register twice), and transformers' probe for Hugging Face's unrelated ``kernels`` package would find ours.
"""

import importlib.util

import pytest

FOLDERS = {"bench": "imagpose.bench", "export": "imagpose.export", "kernels": "imagpose.kernels",
           "train": "imagpose.train"}


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_top_level_folder_is_not_importable(folder):
    assert importlib.util.find_spec(folder) is None, (
        f"the top-level folder {folder!r} is importable by its own name; run the tests with `pytest` (not "
        f"`python -m pytest` from the repository root), and import it as {FOLDERS[folder]}")


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_installed_name_is_importable(folder):
    assert importlib.util.find_spec(FOLDERS[folder]) is not None
