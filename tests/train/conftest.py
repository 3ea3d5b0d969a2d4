"""Training test fixtures: a tiny dataset in the quality export's layout and a shared model cache."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from makedata import export_dataset  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    """Tiny weights are built once per session into one cache directory."""
    mp = pytest.MonkeyPatch()
    mp.setenv("VIDTUNE_CACHE_DIR", str(tmp_path_factory.mktemp("model-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Four 9-frame 64x64 clips with English and Korean captions plus one undecodable file, exported
    into the training layout by the quality service's export."""
    return export_dataset(tmp_path_factory.mktemp("archive"), tmp_path_factory.mktemp("dataset"), n=4, corrupt=1)
