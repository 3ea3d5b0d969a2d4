"""Helpers shared by the quality tests (plain functions; fixtures live in conftest.py)."""
from __future__ import annotations

import json
import random
from pathlib import Path

from vidtune.samples import korean_caption

# The default rules with limits that fit tiny test clips (the defaults expect broadcast media).
SMALL_MEDIA_OVERRIDES = {"video_duration": {"min": 1.0}, "min_resolution": {"min": 48}}


def caption(i: int = 0, category: str = "nature") -> str:
    return korean_caption(category, random.Random(i), sentences=3)


def write_labels(root: Path, docs: dict[str, object]) -> Path:
    """Broadcaster-style label files: one JSON document per name (bytes are written as they are)."""
    d = root / "labels"
    d.mkdir(parents=True, exist_ok=True)
    for name, doc in docs.items():
        data = doc if isinstance(doc, bytes) else json.dumps(doc, ensure_ascii=False).encode("utf-8")
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
    return d
