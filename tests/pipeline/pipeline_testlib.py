"""A tiny archive for pipeline runs: a 1920x1080 clip, a portrait clip, an odd-sized clip, a still image,
a damaged file, and one JSON label per item (clips of one second, so a whole run takes seconds)."""
from __future__ import annotations

import json
from pathlib import Path

from vidtune.samples import make_clip, make_image

from quality_testlib import caption

# (id, file, width, height, ffmpeg source)
ITEMS = [
    ("wide", "media/nature/wide.mp4", 1920, 1080, "testsrc2"),
    ("portrait", "media/culture/portrait.mp4", 360, 640, "mandelbrot"),
    ("odd", "media/tangible/odd.mp4", 321, 181, "cellauto=rule=110"),
]
# The default rules with limits that fit one-second test clips; near duplicates are not what this tests.
RULES = """\
rules:
  - {name: caption_length, type: range, field: caption_chars, min: 20, max: 1500}
  - {name: video_duration, type: range, field: duration, min: 0.5, max: 45, media_types: [video]}
  - {name: min_resolution, type: range, field: short_side, min: 48}
  - {name: probe_ok, type: probe_ok}
"""


def make_tiny_archive(root: Path, seconds: float = 1.0, fps: float = 8) -> Path:
    """Clips of `seconds` at `fps` (the default rules want 5 s or more at 10 fps or more)."""
    root = Path(root)
    labels = []
    for i, (item_id, rel, w, h, source) in enumerate(ITEMS):
        make_clip(root / rel, w, h, seconds, fps=fps, source=source, pix_fmt="yuv444p" if w % 2 else "yuv420p")
        labels.append({"id": item_id, "file_path": rel, "caption": caption(i), "category": "자연/풍경",
                       "media_type": "video", "width": w, "height": h, "duration": seconds})
    make_image(root / "media/still/photo.png", 640, 480)
    labels.append({"id": "photo", "file_path": "media/still/photo.png", "caption": caption(7),
                   "category": "건축", "media_type": "image", "width": 640, "height": 480})
    (root / "media/broken").mkdir(parents=True, exist_ok=True)
    (root / "media/broken/damaged.mp4").write_text("not a video\n")
    labels.append({"id": "damaged", "file_path": "media/broken/damaged.mp4", "caption": caption(9),
                   "category": "사건/사고", "media_type": "video", "width": 1920, "height": 1080, "duration": 1.0})
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for doc in labels:
        (root / "labels" / f"{doc['id']}.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return root
