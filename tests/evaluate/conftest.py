"""Fixtures for the evaluation tests: tiny random metric models built on the fly, synthetic clips."""
from __future__ import annotations

import os

import pytest

from vidtune.evaluate.tiny import build_tiny_clip_bundle, build_tiny_i3d


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    return build_tiny_clip_bundle(tmp_path_factory.mktemp("clip") / "bundle")


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_dir):
    from vidtune.evaluate.clipscore import load_clip

    return load_clip(weights=str(tiny_clip_dir))


@pytest.fixture(scope="session")
def tiny_i3d_path(tmp_path_factory):
    return build_tiny_i3d(tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt")


@pytest.fixture(scope="session", autouse=True)
def _cache_in_tmp(tmp_path_factory):
    # Downloaded weights and registered configs stay inside the session's temp area.
    old = os.environ.get("VIDTUNE_CACHE_DIR")
    os.environ["VIDTUNE_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "cache")
    yield
    if old is None:
        os.environ.pop("VIDTUNE_CACHE_DIR", None)
    else:
        os.environ["VIDTUNE_CACHE_DIR"] = old
