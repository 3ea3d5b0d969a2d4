"""Small real media (ffmpeg test sources, 64-160 px, 1-3 s) and Korean captions for the quality tests."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from vidtune.samples import CATEGORIES, ffmpeg_run, make_clip, make_image

from quality_testlib import caption


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """One directory of real clips, shared by every test (read-only)."""
    d = tmp_path_factory.mktemp("media")
    make_clip(d / "moving.mp4", 160, 96, 2, fps=10)                                   # testsrc2: moves
    make_clip(d / "moving_copy.mp4", 160, 96, 2, fps=10)                              # same bytes
    make_clip(d / "mandel.mp4", 128, 96, 2, fps=10, source="mandelbrot")              # other content
    make_clip(d / "still.mp4", 128, 72, 2, fps=10, source="color=c=gray")             # a still clip
    make_clip(d / "black.mp4", 128, 72, 2, fps=10, source="color=c=black")
    make_clip(d / "blurry.mp4", 160, 96, 2, fps=10, extra=["-vf", "boxblur=10:2"])
    ffmpeg_run(["-i", str(d / "moving.mp4"), "-vf", "scale=120:72", "-c:v", "libx264", "-crf", "32",
                str(d / "rescaled.mp4")])                                             # a smaller re-encode
    ffmpeg_run(["-f", "lavfi", "-i", "testsrc2=size=96x64:rate=10", "-f", "lavfi", "-i", "sine=frequency=440",
                "-t", "1.5", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
                str(d / "with_audio.mp4")])
    make_clip(d / "cuts.mp4", 128, 72, 3, fps=10, source="testsrc2",
              extra=["-vf", "drawbox=enable='between(t,1,2)':c=red:t=fill"])           # 2 hard cuts
    make_image(d / "still.png", 160, 120)
    good = (d / "moving.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(good[: len(good) // 4])
    (d / "not_video.mp4").write_text("이것은 영상이 아닙니다\n", encoding="utf-8")
    (d / "empty.mp4").write_bytes(b"")
    return d


@pytest.fixture
def archive(media_dir, tmp_path) -> Path:
    """A dataset root with media/ (a copy of the shared clips) and a CSV listing of them."""
    root = tmp_path / "archive"
    shutil.copytree(media_dir, root / "media")
    rows = [
        ("media/moving.mp4", caption(1), "video", CATEGORIES["nature"]),
        ("media/moving_copy.mp4", caption(2), "video", CATEGORIES["nature"]),
        ("media/mandel.mp4", caption(3, "culture"), "video", CATEGORIES["culture"]),
        ("media/still.mp4", caption(4, "culture"), "video", CATEGORIES["culture"]),
        ("media/black.mp4", caption(5, "history"), "video", CATEGORIES["history"]),
        ("media/blurry.mp4", caption(6, "history"), "video", CATEGORIES["history"]),
        ("media/still.png", caption(7, "architecture"), "image", CATEGORIES["architecture"]),
        ("media/truncated.mp4", caption(8, "incident"), "video", CATEGORIES["incident"]),
        ("media/not_video.mp4", caption(9, "incident"), "video", CATEGORIES["incident"]),
        ("media/missing.mp4", caption(10, "incident"), "video", CATEGORIES["incident"]),
        ("../outside.mp4", caption(11, "incident"), "video", CATEGORIES["incident"]),
    ]
    with open(root / "list.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file_path", "caption", "media_type", "category", "source_tape"])
        w.writerows([(*r, f"T{i:03d}") for i, r in enumerate(rows)])
    return root
