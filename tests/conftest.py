"""Shared fixtures: the tiny model zoo, built once per session (nothing comes from a hub)."""

from __future__ import annotations

import os

import numpy as np
import PIL.Image
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The tiny models are far too small to gain from intra-op threads; with two cores shared, one thread
# per test process is several times faster (and CI-stable).
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    """A lazily built zoo: ``zoo("pipeline")`` returns the path of that part, building it on first use."""
    from multiedit.testing import build_zoo

    root = tmp_path_factory.mktemp("zoo")

    def get(part: str):
        return build_zoo(root, parts=[part])[part]

    return get


@pytest.fixture(autouse=True)
def _quiet_progress_bars():
    from diffusers.utils import logging as dlog

    dlog.disable_progress_bar()
    yield


def random_image(w: int = 32, h: int = 32, seed: int = 0, mode: str = "RGB") -> PIL.Image.Image:
    arr = (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)
    return PIL.Image.fromarray(arr).convert(mode)


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "input.png"
    random_image(36, 44).save(path)
    return path
